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


def _be16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 2], "big")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment, walking the marker segments."""
    at = 2
    while at + 9 < len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return _be16(data, at + 7), _be16(data, at + 5)
        if marker == 0xDA:  # the scan starts before any frame header: not a valid JPEG
            return None
        at += 2 + _be16(data, at + 2)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 " and len(data) >= 30:
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return None


def declared_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) the header of `data` (an image of format `kind`) declares, without decoding it;
    None when it cannot be read, or for a format whose header this does not parse (TIFF, JPEG 2000)."""
    if kind == "JPEG":
        return _jpeg_size(data)
    if kind == "PNG" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if kind == "BMP" and len(data) >= 26:
        return int.from_bytes(data[18:22], "little", signed=True), abs(int.from_bytes(data[22:26], "little", signed=True))
    if kind == WEBP:
        return _webp_size(data)
    return None


def truncation(data: bytes, kind: str) -> str | None:
    """What shows that an image of format `kind` was cut short, or None. `data` may carry zero padding
    (the rows of a request of several images share one length)."""
    if kind == "JPEG" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):  # the last scan has no end
        return "no end-of-image marker after its image data"
    if kind == "PNG" and data.rfind(b"IEND") < 33:
        return "no IEND chunk"
    declared = {"BMP": int.from_bytes(data[2:6], "little"), WEBP: 8 + int.from_bytes(data[4:8], "little")}.get(kind, 0)
    if declared > len(data):
        return f"its header declares {declared} bytes"
    return None


# How the server's models refuse an image: the client recognizes a bad image (not a failed server) by it.
UNDECODABLE = "cannot be decoded"


def refusal(tensor: str, index: int, reason: str) -> str:
    """The server's message for image `index` of a request's `tensor` that the decoder cannot take."""
    return f"{tensor}: image {index} of the request {UNDECODABLE}: {reason}"


def problem(data: bytes, max_pixels: int) -> str | None:
    """Why the server's decoder cannot take `data` (one encoded image, maybe zero-padded), or None.

    What it catches without decoding: nothing there, an unknown or unsupported format, an image cut
    short, a header without a readable pixel size, and a declared size over `max_pixels` (a
    decompression bomb: a few KB that decode to gigabytes). Damage inside complete image data is
    found only by decoding.
    """
    stripped = data.rstrip(b"\x00")
    if not stripped:
        return "the image is empty (0 bytes)"
    kind = image_format(data[:16])
    if kind is None:
        return f"not a recognized image format (first bytes: {data[:8].hex(' ')}, {len(stripped)} bytes)"
    if kind in UNSUPPORTED:
        return f"{kind} images are not supported (send {SUPPORTED_TEXT})"
    cut = truncation(data, kind)
    if cut:
        return f"{kind} image of {len(stripped)} bytes is truncated: {cut}"
    size = declared_size(data, kind)
    if size is None and kind not in ("TIFF", "JPEG 2000"):
        return f"{kind} image of {len(stripped)} bytes has no readable pixel size in its header"
    if size is not None:
        width, height = size
        if width < 1 or height < 1:
            return f"{kind} header declares {width}x{height} pixels"
        if width * height > max_pixels:
            return (f"{kind} header declares {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
                    "(a decompression bomb?)")
    return None
