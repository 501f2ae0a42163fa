"""The encoded image formats the server decodes, told apart by their leading bytes.

One table for both ends: the client refuses what the server cannot decode before sending it, and
the local flavor's preprocessing model names the format of an image that failed to decode. This
module imports nothing: the build copies it beside that model's `model.py`, which Triton's python
backend runs outside this project.
"""

from __future__ import annotations

# Leading bytes of the formats the server's DALI decoder takes, and of GIF, which it does not.
SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),  # a bare codestream
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)
WEBP = "WebP"  # a RIFF container: told apart by bytes 8-12 (see image_format)
UNSUPPORTED = ("GIF",)
SUPPORTED = tuple(dict.fromkeys([name for _, name in SIGNATURES if name not in UNSUPPORTED] + [WEBP]))
SUPPORTED_TEXT = ", ".join(SUPPORTED[:-1]) + " or " + SUPPORTED[-1]
# File names the tools pick up as images (a folder of test images, warmup samples).
SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2"})


def image_format(data: bytes) -> str | None:
    """The format name of encoded `data` from its leading bytes, or None when it is none of the known ones."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    for magic, name in SIGNATURES:
        if data.startswith(magic):
            return name
    return None
