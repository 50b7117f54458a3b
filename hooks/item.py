"""The value that flows between stages."""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from PIL import Image

MAX_URL_BYTES = 256 * 1024 * 1024
URL_TIMEOUT = (10.0, 60.0)


@dataclass
class Item:
    """One image in the stream: a key, the image itself, its media type and metadata.

    `image` is a file path, an http(s) URL or the encoded bytes; nothing is read until a stage
    asks (`read_bytes`, `open`). Stages add to `metadata` and pass items on, or make new ones
    with `replace`.
    """

    key: str
    image: Path | str | bytes
    media_type: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def is_url(self) -> bool:
        """Whether `image` is an http(s) URL."""
        return isinstance(self.image, str) and self.image.startswith(("http://", "https://"))

    def read_bytes(self) -> bytes:
        """The encoded image: the file read, the URL fetched, or the bytes themselves."""
        if isinstance(self.image, bytes):
            return self.image
        if self.is_url:
            return _fetch(str(self.image))
        return Path(self.image).read_bytes()

    def open(self) -> Image.Image:
        """The image, opened with Pillow (decoded lazily, as Pillow does)."""
        return Image.open(io.BytesIO(self.read_bytes()))

    def replace(self, **changes: Any) -> Item:
        """A new item with `changes` applied; the metadata dict is copied, not shared."""
        changes.setdefault("metadata", dict(self.metadata))
        return dataclasses.replace(self, **changes)


def _fetch(url: str) -> bytes:
    with requests.get(url, stream=True, timeout=URL_TIMEOUT) as response:
        response.raise_for_status()
        chunks, size = [], 0
        for chunk in response.iter_content(1 << 16):
            size += len(chunk)
            if size > MAX_URL_BYTES:
                raise ValueError(f"{url}: larger than {MAX_URL_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
