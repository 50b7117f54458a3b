"""The value that flows between stages."""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .urls import DEFAULT_URL_LIMITS, FetchError, UrlLimits, fetch, is_url, redact_url


@dataclass(repr=False)
class Item:
    """One image in the stream: a key, the image itself, its media type and metadata.

    `image` is a file path, an http(s) URL or the encoded bytes; nothing is read until a stage
    asks (`read_bytes`, `open`). A URL is fetched once, the first time it is read: its body (or
    the reason it could not be fetched) is kept for every later read. Stages add to `metadata`
    and pass items on, or make new ones with `replace`. The fetching itself is urls.py's.
    """

    key: str
    image: Path | str | bytes
    media_type: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    url_limits: UrlLimits = field(default=DEFAULT_URL_LIMITS, compare=False)
    """How long and how large the fetch of a URL `image` may be."""
    _fetched: bytes | None = field(default=None, init=False, compare=False)
    _fetch_failure: str | None = field(default=None, init=False, compare=False)

    @property
    def is_url(self) -> bool:
        """Whether `image` is an http(s) URL."""
        return isinstance(self.image, str) and is_url(self.image)

    @property
    def source(self) -> str:
        """Where the image comes from, fit to show: a URL without its secrets, a path, or a size."""
        if isinstance(self.image, bytes):
            return f"<{len(self.image)} bytes>"
        return redact_url(str(self.image)) if self.is_url else str(self.image)

    def read_bytes(self) -> bytes:
        """The encoded image: the file read, the URL fetched (once), or the bytes themselves."""
        if isinstance(self.image, bytes):
            return self.image
        if self.is_url:
            if self._fetched is None and self._fetch_failure is None:
                try:
                    self._fetched = fetch(str(self.image), self.url_limits)
                except FetchError as error:
                    # Only its message is kept: the error's traceback and context hold the
                    # fetch's frames (what it had read of the body) in a reference cycle.
                    self._fetch_failure = str(error)
            if self._fetched is None:
                raise FetchError(self._fetch_failure)
            return self._fetched
        return Path(self.image).read_bytes()

    def open(self) -> Image.Image:
        """The image, opened with Pillow (decoded lazily, as Pillow does)."""
        return Image.open(io.BytesIO(self.read_bytes()))

    def replace(self, **changes: Any) -> Item:
        """A new item with `changes` applied; the metadata dict is copied, not shared."""
        changes.setdefault("metadata", dict(self.metadata))
        replaced = dataclasses.replace(self, **changes)
        if replaced.image is self.image:
            replaced._fetched = self._fetched
        return replaced

    def __repr__(self) -> str:
        return (
            f"Item(key={self.key!r}, image={self.source!r}, media_type={self.media_type!r}, "
            f"metadata keys={sorted(self.metadata)!r})"
        )
