"""Images of many kinds, good and bad, made from real photos: what the soak run, the isolation tests and
the hostile-request tests send.

Good: JPEG baseline and progressive, CMYK and grayscale JPEG, EXIF-rotated JPEG, PNG with alpha,
BMP, very large and tiny images. Bad: truncated JPEG and PNG, empty, random bytes, GIF (unsupported),
decompression bombs (a small PNG and JPEG whose headers declare billions of pixels), and a JPEG whose
framing is whole but whose Huffman table is not (only a decoder finds that one).
"""

from __future__ import annotations

import dataclasses
import io
import random
import struct
import zlib


@dataclasses.dataclass(frozen=True)
class Sample:
    kind: str
    data: bytes


def _encode(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _exif_rotated(image) -> bytes:
    """Stored sideways with EXIF orientation 6 (display: rotate 90 degrees clockwise)."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes())


def _image(encoded: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(encoded)).convert("RGB")


def good(photos: list[bytes]) -> list[Sample]:
    """Each photo (encoded JPEG bytes) in several encodings, plus a very large and a tiny image."""
    from PIL import Image

    samples = []
    for photo in photos:
        image = _image(photo)
        rgba = image.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(image.size))
        samples += [
            Sample("jpeg", photo),
            Sample("jpeg-progressive", _encode(image, "JPEG", progressive=True, quality=90)),
            Sample("jpeg-cmyk", _encode(image.convert("CMYK"), "JPEG")),
            Sample("jpeg-grayscale", _encode(image.convert("L"), "JPEG")),
            Sample("jpeg-exif-rotated", _exif_rotated(image)),
            Sample("png-alpha", _encode(rgba, "PNG")),
            Sample("bmp", _encode(image, "BMP")),
        ]
    first = _image(photos[0])
    samples.append(Sample("jpeg-very-large", _encode(first.resize((4000, 3000)), "JPEG", quality=85)))
    samples.append(Sample("png-tiny", _encode(first.resize((2, 2)), "PNG")))
    return samples


def _png_declaring(width: int, height: int) -> bytes:
    """A valid PNG of one row of zeros whose IHDR declares width x height (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b"")


def _jpeg_declaring(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` with its start-of-frame header rewritten to declare width x height."""
    at = jpeg.index(b"\xff\xc0") if b"\xff\xc0" in jpeg else jpeg.index(b"\xff\xc2")
    return jpeg[:at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9:]


def _bogus_huffman_table(jpeg: bytes) -> bytes:
    """`jpeg` with the code counts of its first Huffman table overwritten: framing whole (every marker in
    place, the end-of-image marker too), but no decoder can read it ("Bogus Huffman table definition")."""
    at = jpeg.index(b"\xff\xc4")
    return jpeg[:at + 5] + b"\xff" * 16 + jpeg[at + 21:]


def bad(jpeg: bytes) -> list[Sample]:
    """What a server must refuse: each kind once, made from the photo `jpeg`."""
    png = _encode(_image(jpeg), "PNG")
    return [
        Sample("jpeg-truncated", jpeg[: len(jpeg) * 2 // 3]),
        Sample("png-truncated", png[: len(png) // 2]),
        Sample("empty", b""),
        Sample("random-bytes", random.Random(3).randbytes(4096)),
        Sample("gif", _encode(_image(jpeg).convert("P"), "GIF")),
        Sample("png-bomb", _png_declaring(100_000, 100_000)),
        Sample("jpeg-bomb", _jpeg_declaring(jpeg, 65_000, 65_000)),
    ]


def undecodable(jpeg: bytes) -> Sample:
    """A bad image that no check of its framing catches: only the decoder does."""
    return Sample("jpeg-bogus-huffman-table", _bogus_huffman_table(jpeg))
