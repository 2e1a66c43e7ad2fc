"""Decode, guard, resize and re-encode images with PIL, raising Reject for bad ones.

Guards run in order of cost: the header is read first (format, size) so a decompression bomb or
a tiny image is rejected before any pixel is decoded; then the pixels are loaded, which is where
corrupt and truncated files fail.
"""

import io
import warnings

from PIL import Image

from pipelines.validate import Reject


def read_bytes(path: str) -> bytes:
    """A local path or a URI (s3://...) to bytes; any failure is a Reject naming the file."""
    try:
        if "://" in path:
            from lare.storage import read_bytes as read_uri

            return read_uri(path)
        with open(path, "rb") as f:
            return f.read()
    except (OSError, ValueError) as e:  # pyarrow raises OSError/FileNotFoundError subclasses
        raise Reject("image_unreadable", f"cannot read image file {path}: {e}") from None


def decode(data: bytes, *, max_pixels: int, min_side: int, what: str = "image") -> Image.Image:
    """Bytes to an RGB PIL image, or Reject (corrupt_image, decompression_bomb, image_too_small)."""
    if not data:
        raise Reject("corrupt_image", f"{what} has zero bytes")
    try:
        with warnings.catch_warnings():  # our own max_pixels check below decides, not PIL's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # PIL's hard limit (2x its MAX_IMAGE_PIXELS) fires inside open()
        raise Reject("decompression_bomb", f"{what}: {e}") from None
    except Exception as e:  # PIL raises UnidentifiedImageError, SyntaxError, ValueError... on junk
        raise Reject("corrupt_image", f"{what} is not a decodable image: {e}") from None
    w, h = im.size
    if w * h > max_pixels:
        raise Reject("decompression_bomb", f"{what} declares {w}x{h} = {w * h} pixels, max_pixels is {max_pixels}")
    check_size(w, h, min_side=min_side, what=what)
    try:
        im.load()  # truncated and corrupt data fail here, not at open()
        return im.convert("RGB") if im.mode != "RGB" else im
    except Exception as e:
        raise Reject("corrupt_image", f"{what} ({im.format} {w}x{h}) fails to decode: {e}") from None


def check_size(w: int, h: int, *, min_side: int, what: str = "image"):
    if min(w, h) < min_side:
        raise Reject("image_too_small", f"{what} is {w}x{h}, min_side is {min_side}")


def fit(im: Image.Image, max_side: int) -> Image.Image:
    """Downscale so the longer side is at most max_side (never upscale). Boxes are normalised, so they stay valid."""
    w, h = im.size
    if max(w, h) <= max_side:
        return im
    scale = max_side / max(w, h)
    return im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)


def encode_png(im: Image.Image, compress_level: int = 6) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
