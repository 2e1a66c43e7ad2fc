"""The two file formats benchmarks ship in, read into plain rows.

- VLMEvalKit TSV (`MMBench_DEV_EN.tsv`, `POPE.tsv`, ...): one question a row, tab-separated, written by pandas
  (`to_csv(sep="\t")`: fields with tabs, newlines or quotes are double-quoted). The `image` cell is base64 of an
  encoded image, or, to save space, the `index` of another row whose image it shares (at most 64 characters,
  VLMEvalKit's rule), or a Python list literal of base64 strings for questions with several images.
- Hugging Face datasets Parquet (what lmms-eval loads): images are structs `{bytes, path}` (the `datasets` Image
  feature), sometimes plain binary or base64 text.

Every error names the file, the row (`index`, or the row number where there is none) and the column.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import io
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_IMAGE_REF = 64  # VLMEvalKit: an image cell this short is another row's index, not base64


class BenchmarkFileError(ValueError):
    """A benchmark file that cannot be read as expected; the message names file, row and column."""


def where(path: Path | str, row: dict, n: int) -> str:
    """How an error names a row: the file and the row's index (or its position when it has no index)."""
    index = next((row[k] for k in ("index", "Index", "id") if k in row), None)
    return f"{Path(path).name} row {f'index={index}' if index not in (None, '') else f'#{n}'}"


def is_missing(value) -> bool:
    """Empty cells. lmms-eval's Parquet writes a missing hint or option as the text "nan" (pandas' NaN)."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    return isinstance(value, str) and value.strip().lower() in ("", "nan")


def text(value) -> str:
    return "" if is_missing(value) else str(value).strip()


# ---------------------------------------------------------------------------------------------
# Images


def check_image(data: bytes, at: str, column: str) -> bytes:
    """Encoded image bytes that PIL can open (header only: cheap, and a corrupt file fails here, not mid-run)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.size  # noqa: B018 - opening parses the header
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise BenchmarkFileError(f"{at}: column '{column}': not a readable image ({e})") from None
    return data


def decode_base64_image(b64: str, at: str, column: str = "image") -> bytes:
    try:
        data = base64.b64decode(b64.strip(), validate=False)
    except (binascii.Error, ValueError) as e:
        raise BenchmarkFileError(f"{at}: column '{column}': not base64 image data ({e})") from None
    if not data:
        raise BenchmarkFileError(f"{at}: column '{column}': empty image")
    return check_image(data, at, column)


def stitch(images: list[bytes]) -> bytes:
    """Several images side by side on white, tops aligned, as one PNG.

    LaRe models take one image per question; questions with several (MMMU-Pro) get all of them in reading
    order. VLMEvalKit gives a non-interleaved model only the first image (it stitches side by side only for
    BLINK); stitching keeps every image the question refers to."""
    if len(images) == 1:
        return images[0]
    pics = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    gap = 8
    canvas = Image.new("RGB", (sum(p.width for p in pics) + gap * (len(pics) - 1), max(p.height for p in pics)), "white")
    x = 0
    for p in pics:
        canvas.paste(p, (x, 0))
        x += p.width + gap
    buf = io.BytesIO()
    canvas.save(buf, "PNG")
    return buf.getvalue()


_BLANK: bytes | None = None


def blank_image() -> bytes:
    """A small white PNG for text-only questions (ScienceQA): the model always takes an image."""
    global _BLANK
    if _BLANK is None:
        buf = io.BytesIO()
        Image.new("RGB", (56, 56), "white").save(buf, "PNG")
        _BLANK = buf.getvalue()
    return _BLANK


def image_cell(value, at: str, column: str, base_dir: Path | None = None) -> bytes | None:
    """Image bytes from a Parquet cell: {bytes, path} struct, raw bytes, base64 text or a list of those (stitched).

    None when the cell is empty (a text-only question)."""
    if is_missing(value):
        return None
    if isinstance(value, dict):
        if value.get("bytes"):
            return check_image(bytes(value["bytes"]), at, column)
        path = value.get("path")
        if path:
            p = Path(path)
            if not p.is_absolute() and base_dir is not None:
                p = base_dir / p
            if not p.is_file():
                raise BenchmarkFileError(f"{at}: column '{column}': image struct has no bytes and its path {path!r} "
                                         f"does not exist")
            return check_image(p.read_bytes(), at, column)
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return check_image(bytes(value), at, column)
    if isinstance(value, str):
        return decode_base64_image(value, at, column)
    if isinstance(value, (list, tuple)):
        parts = [image_cell(v, at, column, base_dir) for v in value]
        parts = [p for p in parts if p is not None]
        return stitch(parts) if parts else None
    raise BenchmarkFileError(f"{at}: column '{column}': unsupported image cell of type {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# VLMEvalKit TSV


def read_tsv(path: Path) -> list[dict]:
    """Rows of a VLMEvalKit TSV as {column: text}, with `image` resolved to encoded bytes (or None).

    Image references are resolved against the whole file, so a row keeps its image under any later `limit`.
    An `image_path` column (VLMEvalKit's "meta only" files) is read relative to the TSV's folder."""
    csv.field_size_limit(sys.maxsize)  # base64 images are far longer than csv's default field limit
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark must not rename 'index'
        reader = csv.reader(f, delimiter="\t")
        try:
            header = next(reader)
        except StopIteration:
            raise BenchmarkFileError(f"{path}: empty file (no header row)") from None
        header = [h.strip() for h in header]
        rows = []
        for cells in reader:
            if not cells:
                continue
            if len(cells) != len(header):
                raise BenchmarkFileError(f"{path.name} line {reader.line_num}: {len(cells)} fields, header has "
                                         f"{len(header)} ({header[:8]}...): is this a tab-separated VLMEvalKit file?")
            rows.append(dict(zip(header, cells)))
    if "index" not in header:
        raise BenchmarkFileError(f"{path}: no 'index' column (columns: {header})")

    raw = {r["index"].strip(): r.get("image", "").strip() for r in rows}
    decoded: dict[str, bytes] = {}  # one decode per distinct image, however many rows refer to it

    def resolve(n: int, row: dict) -> bytes | None:
        at = where(path, row, n)
        cell = row.get("image", "").strip()
        owner = row["index"].strip()
        if 0 < len(cell) <= MAX_IMAGE_REF:
            if cell not in raw:
                raise BenchmarkFileError(f"{at}: column 'image': {cell!r} is too short to be an image and is not the "
                                         f"index of another row")
            owner, cell = cell, raw[cell]
            if len(cell) <= MAX_IMAGE_REF:
                raise BenchmarkFileError(f"{at}: column 'image': refers to row index={owner}, whose image is itself "
                                         f"a reference ({cell!r}); references are one level deep")
        if not cell:
            return None
        if owner not in decoded:
            if cell.startswith("[") and cell.endswith("]"):
                try:
                    parts = ast.literal_eval(cell)
                except (ValueError, SyntaxError) as e:
                    raise BenchmarkFileError(f"{at}: column 'image': looks like a list of images but does not parse "
                                             f"({e})") from None
                decoded[owner] = stitch([decode_base64_image(str(p), at) for p in parts])
            else:
                decoded[owner] = decode_base64_image(cell, at)
        return decoded[owner]

    for n, row in enumerate(rows, start=1):
        if "image" in row:
            row["image"] = resolve(n, row)
        elif "image_path" in row:
            at = where(path, row, n)
            cell = row["image_path"].strip()
            try:
                paths = [str(p) for p in ast.literal_eval(cell)] if cell.startswith("[") else [cell]
            except (ValueError, SyntaxError) as e:
                raise BenchmarkFileError(f"{at}: column 'image_path': {cell[:80]!r} does not parse ({e})") from None
            files = [Path(p) if Path(p).is_absolute() else path.parent / p for p in paths if p.strip()]
            for f in files:
                if not f.is_file():
                    raise BenchmarkFileError(f"{at}: column 'image_path': no such file {f}")
            row["image"] = stitch([check_image(f.read_bytes(), at, "image_path") for f in files]) if files else None
        else:
            raise BenchmarkFileError(f"{path}: neither an 'image' nor an 'image_path' column (columns: {header})")
    return rows


# ---------------------------------------------------------------------------------------------
# Parquet (Hugging Face datasets / lmms-eval)


def read_parquet(files: list[Path]) -> list[dict]:
    """Rows of one or more Parquet files as Python dicts; each row remembers its file in `_file`."""
    import pyarrow.parquet as pq

    rows = []
    for f in files:
        try:
            table = pq.read_table(f)
        except Exception as e:  # pyarrow raises several types for a file that is not Parquet
            raise BenchmarkFileError(f"{f}: not a readable Parquet file ({e})") from None
        for r in table.to_pylist():
            r["_file"] = f
            rows.append(r)
    return rows
