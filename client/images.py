"""Images in (paths, bytes, file-like objects), checked encoded bytes out.

The client never decodes: it reads the format from the magic bytes and the pixel size from the
header (Pillow opens images lazily), and refuses empty, unknown, unsupported or oversized input
before anything is sent.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import BinaryIO

from client.errors import InvalidImage
from client.image_formats import SUPPORTED_TEXT, UNSUPPORTED, image_format

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

@dataclasses.dataclass(frozen=True)
class Limits:
    """Refuse input above these sizes before sending it (a decoded 100 MP image takes 300 MB)."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 50_000_000


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    source: str
    data: bytes
    format: str
    width: int
    height: int


def read(image: ImageInput, index: int) -> tuple[str, bytes]:
    """(a name for messages, the bytes) of a path, a bytes-like object or a binary file object."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"<image #{index}>", bytes(image)
    if hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, bytes):
            name = getattr(image, "name", f"<file #{index}>")
            raise InvalidImage("the file object returned text: open it in binary mode ('rb')", name)
        return str(getattr(image, "name", f"<file #{index}>")), data
    path = Path(image)
    try:
        return str(path), path.read_bytes()
    except FileNotFoundError:
        raise InvalidImage("no such file", str(path)) from None
    except IsADirectoryError:
        raise InvalidImage("is a directory, not an image file", str(path)) from None
    except OSError as exc:
        raise InvalidImage(f"cannot read: {exc.strerror}", str(path)) from None


def prepare(image: ImageInput, index: int = 0, limits: Limits = Limits()) -> PreparedImage:
    """Read and check one image; raises InvalidImage naming it and the reason."""
    source, data = read(image, index)
    if not data:
        raise InvalidImage("the image is empty (0 bytes)", source)
    if len(data) > limits.max_bytes:
        raise InvalidImage(f"{len(data)} bytes is over the limit of {limits.max_bytes} bytes", source)
    kind = image_format(data)
    if kind is None:
        raise InvalidImage(f"not a supported image format (first bytes: {data[:8].hex(' ')}); send {SUPPORTED_TEXT}", source)
    if kind in UNSUPPORTED:
        raise InvalidImage(f"{kind} is not supported by the server's decoder: convert it to PNG or JPEG", source)
    width, height = _size(data, kind, source)
    if width * height > limits.max_pixels:
        raise InvalidImage(f"{width}x{height} = {width * height} pixels is over the limit of {limits.max_pixels}", source)
    return PreparedImage(source, data, kind, width, height)


def _size(data: bytes, kind: str, source: str) -> tuple[int, int]:
    from PIL import Image

    try:
        # Image.open parses the header only; nothing is decoded.
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
    except Image.DecompressionBombError:
        raise InvalidImage("declares an absurd pixel count (decompression bomb)", source) from None
    except Exception as exc:
        raise InvalidImage(f"{kind} header is unreadable ({exc}): the file is damaged or truncated", source) from None
    if width < 1 or height < 1:
        raise InvalidImage(f"{kind} header declares {width}x{height} pixels", source)
    return width, height
