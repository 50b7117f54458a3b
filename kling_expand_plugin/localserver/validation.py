"""The create body's rules: a valid body becomes a CreateRequest, anything else an ApiError.

Each message names the field at fault. Cheap fields are checked first, the image last.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import math
import socket
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from kling_expand_plugin.imaging.geometry import Ratios
from kling_expand_plugin.kling import limits
from kling_expand_plugin.localserver.errors import ApiError, invalid_parameter, invalid_request

MAX_PIXELS = 50_000_000
"""Largest input image this local server decodes (undocumented for Kling; a safety cap)."""

RATIO_FIELDS = (
    "up_expansion_ratio",
    "down_expansion_ratio",
    "left_expansion_ratio",
    "right_expansion_ratio",
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"

Fetcher = Callable[[str], bytes]
"""Downloads an image URL, raising ApiError (1201) when it cannot."""


@dataclass(frozen=True)
class CreateRequest:
    """A create body that passed every rule.

    The image is kept as its file (at most 10 MB), not as pixels (a 48 MP photo is 144 MB of
    them), so a task waiting for its render holds little memory; `image()` decodes it again.
    """

    image_file: bytes
    width: int
    height: int
    ratios: Ratios
    prompt: str
    n: int
    watermark: bool
    callback_url: str | None
    external_task_id: str

    def image(self) -> Image.Image:
        return decode_image(self.image_file)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or ApiError 1200."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise invalid_request("request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise invalid_request("request body must be a JSON object")
    return payload


def validate_create(payload: dict[str, Any], fetch: Fetcher) -> CreateRequest:
    """Check every documented rule of the create body; raise ApiError 1201 naming the field."""
    ratios = _ratios(payload)
    prompt = _optional_str(payload, "prompt")
    if len(prompt) > limits.MAX_PROMPT_CHARS:
        raise invalid_parameter(
            f"prompt has {len(prompt)} characters, more than {limits.MAX_PROMPT_CHARS}"
        )
    n = _n(payload)
    watermark = _watermark(payload)
    callback_url = _optional_str(payload, "callback_url") or None
    if callback_url is not None and not _is_http_url(callback_url):
        raise invalid_parameter("callback_url must be an http(s) URL")
    external_task_id = _optional_str(payload, "external_task_id")
    image_file = _image_file(payload, fetch)
    width, height = decode_image(image_file).size
    return CreateRequest(
        image_file, width, height, ratios, prompt, n, watermark, callback_url, external_task_id
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ratios(payload: dict[str, Any]) -> Ratios:
    values = []
    for name in RATIO_FIELDS:
        if payload.get(name) is None:
            raise invalid_parameter(f"{name} is required")
        value = payload[name]
        if not _is_number(value) or not math.isfinite(value):
            raise invalid_parameter(f"{name} must be a number")
        values.append(float(value))
    ratios = Ratios(*values)
    problems = ratios.problems()
    if problems:
        raise invalid_parameter("; ".join(problems))
    return ratios


def _optional_str(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise invalid_parameter(f"{name} must be a string")
    return value


def _n(payload: dict[str, Any]) -> int:
    value = payload.get("n")
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid_parameter("n must be an integer")
    if not limits.MIN_N <= value <= limits.MAX_N:
        raise invalid_parameter(f"n = {value} is outside {limits.MIN_N}..{limits.MAX_N}")
    return value


def _watermark(payload: dict[str, Any]) -> bool:
    value = payload.get("watermark_info")
    if value is None:
        return False
    if not isinstance(value, dict):
        raise invalid_parameter('watermark_info must be an object {"enabled": boolean}')
    enabled = value.get("enabled")
    if not isinstance(enabled, bool):
        raise invalid_parameter("watermark_info.enabled must be a boolean")
    return enabled


def _is_http_url(text: str) -> bool:
    parts = urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _image_file(payload: dict[str, Any], fetch: Fetcher) -> bytes:
    value = payload.get("image")
    if value is None or value == "":
        raise invalid_parameter("image is required")
    if not isinstance(value, str):
        raise invalid_parameter("image must be a string: an http(s) URL or raw base64")
    if value.startswith("data:"):
        raise invalid_parameter("image must be raw base64 without a data:...;base64, prefix")
    if _is_http_url(value):
        return fetch(value)
    if "://" in value:
        raise invalid_parameter("image URL must be http or https")
    return _decode_base64(value)


def _decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_parameter("image is neither an http(s) URL nor valid base64") from None


def decode_image(data: bytes) -> Image.Image:
    """The image file's pixels, after checking size, format, dimensions and aspect ratio."""
    if len(data) > limits.MAX_FILE_BYTES:
        raise invalid_parameter(
            f"image file is {len(data)} bytes, more than {limits.MAX_FILE_BYTES} (10 MB)"
        )
    if not (data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC)):
        raise invalid_parameter("image must be a JPG or PNG file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in limits.FORMATS:
                raise invalid_parameter("image must be a JPG or PNG file")
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise invalid_parameter(
                    f"image is {width}x{height}, more than this server's {MAX_PIXELS} pixels"
                )
            image.load()
    except ApiError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Warning):
        raise invalid_parameter("image file could not be decoded") from None
    _check_dimensions(image.width, image.height)
    return image


def _check_dimensions(width: int, height: int) -> None:
    if width < limits.MIN_SIDE or height < limits.MIN_SIDE:
        raise invalid_parameter(
            f"image is {width}x{height}; width and height must be at least {limits.MIN_SIDE} px"
        )
    aspect = width / height
    if not limits.MIN_ASPECT - 1e-9 <= aspect <= limits.MAX_ASPECT + 1e-9:
        raise invalid_parameter(f"image aspect ratio {width}:{height} is outside 1:2.5..2.5:1")


def fetch_image_url(url: str, *, timeout: float = 10.0) -> bytes:
    """Download an image URL within `timeout` seconds in all, at most the API's 10 MB.

    The deadline covers everything (connecting, the headers, the body): a watchdog shuts the
    socket down when it passes, so a body dripped a byte at a time cannot stretch it.
    Redirects are not followed. Raises ApiError 1201 on any failure.
    """
    parts = urlsplit(url)
    connection_class = HTTPSConnection if parts.scheme == "https" else HTTPConnection
    try:
        connection = connection_class(parts.hostname or "", parts.port, timeout=timeout)
    except (ValueError, OSError):  # a bad port
        raise invalid_parameter("image URL is not a valid http(s) URL") from None
    expired = threading.Event()
    sockets: list[socket.socket] = []  # the connection lets go of its socket for a closing body

    def expire() -> None:
        expired.set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()

    def too_slow() -> ApiError:  # made anew each time: one kept in a local would be a cycle
        return invalid_parameter(f"image URL could not be downloaded within {timeout:g} s")

    try:
        connection.connect()
        sockets.append(connection.sock)
        if expired.is_set():
            raise too_slow()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", target, headers={"Accept-Encoding": "identity"})
        response = connection.getresponse()
        if response.status != 200:
            raise invalid_parameter(f"image URL could not be downloaded: HTTP {response.status}")
        too_big = f"image file is more than {limits.MAX_FILE_BYTES} bytes (10 MB)"
        declared = response.getheader("Content-Length", "")
        if declared.isdigit() and int(declared) > limits.MAX_FILE_BYTES:
            raise invalid_parameter(too_big)
        data = bytearray()
        while chunk := response.read1(65536):
            data += chunk
            if len(data) > limits.MAX_FILE_BYTES:
                raise invalid_parameter(too_big)
        if expired.is_set():  # the watchdog's shutdown reads as the end of the body
            raise too_slow()
        return bytes(data)
    except (OSError, HTTPException) as error:
        if expired.is_set():
            raise too_slow() from None
        raise invalid_parameter(
            f"image URL could not be downloaded: {type(error).__name__}"
        ) from None
    finally:
        watchdog.cancel()
        connection.close()
