"""Locate, decode, guard, resize and re-encode images with PIL, raising Reject for bad ones.

Guards run in order of cost: the path is checked against its root before the file is opened; the
header is read first (format, size) so a decompression bomb or a tiny image is rejected before any
pixel is decoded; then the pixels are loaded, which is where corrupt and truncated files fail.

Decoding keeps what a viewer shows, which a bare `Image.open(...).convert("RGB")` does not:
  * the EXIF orientation is applied (a phone JPEG with orientation 6 is stored upright), so the
    stored size, and the boxes normalised to it, are those of the displayed frame;
  * 16-bit grey (I;16, I;16B, ...) is scaled to 8 bits (v * 255 / 65535), not clipped to white;
    32-bit "I" and float "F" follow `_wide_scale` (from the value range);
  * transparency (RGBA, LA, PA, palette or colour-key transparency) is composited on white;
  * everything else (L, P, CMYK, YCbCr, 1, 16-bit RGB) goes through PIL's own conversion to RGB.
"""

import functools
import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from lare import storage
from pipelines.validate import Reject

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
EXIF_ORIENTATION = 0x0112
WHITE = (255, 255, 255, 255)


# ---------------------------------------------------------------------------------------------
# Where the file is.


@functools.lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    """The root's real path with a trailing separator (one root serves a whole job: resolve it once)."""
    real = os.path.realpath(root)
    return real if real.endswith(os.sep) else real + os.sep


@functools.lru_cache(maxsize=4096)
def _real_dir(folder: str) -> str:
    return os.path.realpath(folder)


def _realpath(path: str) -> str:
    """os.path.realpath, with the folder part cached: a dataset's images share a few folders, and resolving
    every component of every path cost about as much as decoding a small image. The file name itself is
    still checked each time (it may be a symlink)."""
    folder, name = os.path.split(path)
    if name in ("", ".", ".."):
        return os.path.realpath(path)
    candidate = os.path.join(_real_dir(folder), name)
    return os.path.realpath(candidate) if os.path.islink(candidate) else candidate


def path_in_root(root: str, path: str) -> str:
    """The file a record's `path` names under `root`, or Reject(image_outside_root) when it leaves the root.

    Every reader with an image root comes through here before anything is opened. The path is joined
    to the root (an absolute path replaces it, as os.path.join does) and resolved with realpath, so
    `../`, absolute paths and symlinks that lead out of the root are all caught; a missing file inside
    the root passes (reading it then fails as image_unreadable). An empty root confines nothing: the
    path is used as given. Object-store roots (s3://...) have no symlinks: `..` segments and paths
    that do not extend the root are refused."""
    if not root:
        return path
    if "://" in root or "://" in path:
        return _uri_in_root(root, path)
    full = os.path.join(root, path)
    real, prefix = _realpath(full), _real_root(root)
    if not real.startswith(prefix):
        raise Reject("image_outside_root", f"image path {path!r} resolves to {real}, outside image_root {prefix.rstrip(os.sep) or os.sep}")
    return full


def _uri_in_root(root: str, path: str) -> str:
    base = root.rstrip("/") + "/"
    full = path if "://" in path else base + path
    segments = full.split("://", 1)[1].split("/")
    if path.startswith("/") or not full.startswith(base) or ".." in segments:
        raise Reject("image_outside_root", f"image path {path!r} is outside image_root {root}")
    return full


def read_bytes(path: str) -> bytes:
    """A local path or a URI (s3://...) to bytes; any failure is a Reject naming the file."""
    try:
        return storage.read_bytes(path)
    except (OSError, ValueError) as e:  # pyarrow raises OSError/FileNotFoundError subclasses
        raise Reject("image_unreadable", f"cannot read image file {path}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Decoding.


def decode(data: bytes, *, max_pixels: int, min_side: int, what: str = "image") -> Image.Image:
    """Bytes to an RGB PIL image as displayed, or Reject (corrupt_image, decompression_bomb, image_too_small)."""
    return decode_displayed(data, max_pixels=max_pixels, min_side=min_side, what=what)[0]


def decode_displayed(data: bytes, *, max_pixels: int, min_side: int, what: str = "image") -> tuple[Image.Image, list[str]]:
    """Like decode, plus notes on what was done that a plain PIL convert("RGB") of the file would not do
    (rotation, 16-bit scaling, compositing): a consumer reading the original file would see another image."""
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
    check_size(w, h, min_side=min_side, what=what)  # a quarter turn swaps the sides: the shorter one is the same
    try:
        im.load()  # truncated and corrupt data fail here, not at open()
        notes = [note] if (note := upright(im)) else []
        rgb, note = to_rgb(im)
    except Exception as e:
        raise Reject("corrupt_image", f"{what} ({im.format} {w}x{h}) fails to decode: {e}") from None
    return rgb, notes + ([note] if note else [])


def upright(im: Image.Image) -> str | None:
    """Apply the EXIF orientation in place (PIL.ImageOps.exif_transpose); a note when it turned the image.

    An unreadable EXIF block is ignored, as viewers do, rather than rejecting a good picture."""
    try:
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:
        return None
    if orientation in (None, 1):
        return None
    ImageOps.exif_transpose(im, in_place=True)
    return f"EXIF orientation {orientation} applied"


def to_rgb(im: Image.Image) -> tuple[Image.Image, str | None]:
    """Any PIL mode to RGB as a viewer shows it, plus a note when PIL's own convert("RGB") would differ."""
    if im.mode in SIXTEEN_BIT_MODES:
        return _grey_to_rgb(_scale(np.asarray(im), 65535)), f"16-bit grey ({im.mode}) scaled to 8 bits"
    if im.mode in ("I", "F"):
        values = np.asarray(im)
        top, how = _wide_scale(values, im.format)
        return _grey_to_rgb(_scale(values, top)), f"{im.mode} grey scaled to 8 bits ({how})"
    if im.mode in ALPHA_MODES or "transparency" in im.info:
        return _on_white(im), f"{im.mode} transparency composited on white"
    return (im if im.mode == "RGB" else im.convert("RGB")), None


def _wide_scale(values: np.ndarray, fmt: str | None) -> tuple[float, str]:
    """The value shown as white for a 32-bit integer (I) or float (F) grey image.

    PNG has no 32-bit grey, so an I image from a PNG holds 16-bit samples (older PIL opens 16-bit PNGs
    as I). Otherwise the range decides: floats within [0, 1] are fractions of white; values within
    [0, 255] are already 8-bit (I is also PIL's working mode for 8-bit data); within [0, 65535] they are
    16-bit samples; anything larger is stretched so its maximum is white. Negatives are black."""
    top = float(values.max()) if values.size else 0.0
    if fmt == "PNG":
        return 65535.0, "16-bit PNG samples"
    if values.dtype.kind == "f" and top <= 1.0:
        return 1.0, "floats in [0, 1]"
    if top <= 255:
        return 255.0, "values within 0..255"
    if top <= 65535:
        return 65535.0, "values within 0..65535, read as 16-bit"
    return top, f"stretched, maximum {top:g} is white"


def _scale(values: np.ndarray, top: float) -> np.ndarray:
    return np.clip(np.rint(values.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))


def _on_white(im: Image.Image) -> Image.Image:
    """Composite on a white background: transparent areas are what a page or viewer shows behind them,
    where dropping alpha would expose arbitrary colours (often black) under fully transparent pixels."""
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")


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
