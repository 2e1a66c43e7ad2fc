"""Decoding keeps what a viewer shows: EXIF orientation, 16-bit grey, transparency, palette, CMYK; boxes and the
stored size follow the displayed frame. Every test image is built here with PIL."""

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipelines import images
from pipelines.build import resolve_options
from pipelines.process import RAW_SCHEMA, process_batch
from pipelines.sources import tabular

QUADRANTS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0))  # top-left, top-right, bottom-left, bottom-right


def quadrants(w=60, h=40) -> Image.Image:
    """An image whose every quarter has its own colour, so any rotation or flip shows."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2], a[: h // 2, w // 2:] = QUADRANTS[0], QUADRANTS[1]
    a[h // 2:, : w // 2], a[h // 2:, w // 2:] = QUADRANTS[2], QUADRANTS[3]
    return Image.fromarray(a)


def encoded(im: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save)
    return buf.getvalue()


def with_orientation(im: Image.Image, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = orientation
    return encoded(im, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))


def decode(data: bytes) -> np.ndarray:
    return np.asarray(images.decode(data, max_pixels=10**7, min_side=1, what="image t"))


# What a viewer does for each EXIF orientation, written out (not via PIL): stored = the inverse applied to the
# displayed image. 3: turn 180; 6: the viewer turns 90 degrees clockwise; 8: 90 degrees counter-clockwise.
STORED_FOR = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270,
              2: Image.Transpose.FLIP_LEFT_RIGHT}


@pytest.mark.parametrize("orientation", sorted(STORED_FOR))
def test_exif_orientation_is_applied_png_exact(orientation):
    shown = quadrants()
    stored = shown.transpose(STORED_FOR[orientation])
    got = decode(with_orientation(stored, orientation, "PNG"))
    np.testing.assert_array_equal(got, np.asarray(shown))  # same size (60x40 again) and every pixel


def test_jpeg_with_orientation_6_is_stored_upright():
    shown = quadrants(64, 48)
    stored = shown.transpose(Image.Transpose.ROTATE_90)  # 48x64 on disk, as a phone held upright writes it
    assert stored.size == (48, 64)
    got = decode(with_orientation(stored, 6, "JPEG"))
    assert got.shape == (48, 64, 3)
    for (y, x), colour in zip([(12, 16), (12, 48), (36, 16), (36, 48)], QUADRANTS):
        assert np.abs(got[y, x].astype(int) - colour).max() <= 12, (y, x, got[y, x])


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 1, 128, 257, 1000, 4096, 32768, 65535]] * 4, np.uint16)
    data = encoded(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    got = decode(data)
    expected = np.rint(values.astype(float) * 255 / 65535).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(got[:, :, c], expected)
    assert got[0, 6, 0] == 128 and got[0, 5, 0] == 16  # mid-grey stays mid-grey (was 255: clipped to white)


def test_sixteen_bit_big_endian_tiff_is_scaled():
    values = np.array([[0, 257, 32768, 65535]] * 4, np.uint16)
    im = Image.frombytes("I;16B", (4, 4), values.astype(">u2").tobytes())
    data = encoded(im, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    np.testing.assert_array_equal(decode(data)[0, :, 1], [0, 1, 128, 255])


@pytest.mark.parametrize("values, expected", [
    ([0, 100, 200, 255], [0, 100, 200, 255]),  # within 0..255: already 8-bit values
    ([0, 257, 32768, 65535], [0, 1, 128, 255]),  # within 0..65535: 16-bit samples
    ([-5, 0, 500_000, 1_000_000], [0, 0, 128, 255]),  # beyond: stretched, the maximum is white, negatives black
])
def test_32_bit_integer_grey_follows_the_value_range(values, expected):
    im = Image.fromarray(np.array([values] * 4, np.int32))
    assert im.mode == "I"
    np.testing.assert_array_equal(decode(encoded(im, "TIFF"))[0, :, 2], expected)


def test_i_mode_image_from_a_png_is_16_bit_whatever_its_range():
    im = Image.fromarray(np.array([[0, 100, 200, 255]] * 4, np.int32))
    im.format = "PNG"  # what older PIL returned for a 16-bit PNG: dark, not 8-bit
    rgb, note = images.to_rgb(im)
    np.testing.assert_array_equal(np.asarray(rgb)[0, :, 0], [0, 0, 1, 1])
    assert "16-bit" in note


def test_grey_l_keeps_its_values():
    values = np.array([[0, 17, 128, 254, 255]] * 4, np.uint8)
    got = decode(encoded(Image.fromarray(values), "PNG"))
    np.testing.assert_array_equal(got[:, :, 0], values)
    np.testing.assert_array_equal(got[:, :, 0], got[:, :, 2])


def palette_image(transparent: bool) -> bytes:
    im = Image.new("P", (4, 2), 0)
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])  # 0 black, 1 red, 2 blue
    im.putpixel((1, 0), 1)
    im.putpixel((2, 0), 2)
    return encoded(im, "PNG", **({"transparency": 0} if transparent else {}))


def test_palette_keeps_its_colours():
    got = decode(palette_image(transparent=False))
    assert [tuple(got[0, x]) for x in range(3)] == [(0, 0, 0), (255, 0, 0), (0, 0, 255)]


def test_palette_transparency_is_white_not_black():
    got = decode(palette_image(transparent=True))
    assert [tuple(got[0, x]) for x in range(3)] == [(255, 255, 255), (255, 0, 0), (0, 0, 255)]


def test_rgba_is_composited_on_white():
    a = np.zeros((2, 4, 4), np.uint8)
    a[:, 0] = (255, 0, 0, 255)  # opaque red
    a[:, 1] = (0, 0, 0, 0)  # fully transparent black: a viewer shows the page, white
    a[:, 2] = (200, 0, 0, 128)  # half transparent
    a[:, 3] = (10, 20, 30, 0)  # transparent, with colour underneath
    got = decode(encoded(Image.fromarray(a, "RGBA"), "PNG")).astype(int)
    assert tuple(got[0, 0]) == (255, 0, 0) and tuple(got[0, 1]) == (255, 255, 255) and tuple(got[0, 3]) == (255, 255, 255)
    half = [200 * 128 / 255 + 255 * 127 / 255, 255 * 127 / 255, 255 * 127 / 255]
    assert np.abs(got[0, 2] - half).max() <= 1


def test_grey_with_alpha_la_is_composited_on_white():
    a = np.zeros((2, 2, 2), np.uint8)
    a[:, 0] = (60, 255)
    a[:, 1] = (60, 0)
    got = decode(encoded(Image.fromarray(a, "LA"), "PNG"))
    assert tuple(got[0, 0]) == (60, 60, 60) and tuple(got[0, 1]) == (255, 255, 255)


@pytest.mark.parametrize("fmt, tolerance", [("TIFF", 0), ("JPEG", 6)])
def test_cmyk_is_converted(fmt, tolerance):
    im = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # red
    for x in range(8, 16):
        for y in range(8):
            im.putpixel((x, y), (255, 255, 0, 0))  # blue
    got = decode(encoded(im, fmt)).astype(int)
    assert np.abs(got[4, 2] - (255, 0, 0)).max() <= tolerance
    assert np.abs(got[4, 13] - (0, 0, 255)).max() <= tolerance


def test_plain_images_get_no_note_and_fixed_ones_say_why():
    _, notes = images.decode_displayed(encoded(quadrants(), "PNG"), max_pixels=10**7, min_side=1)
    assert notes == []
    _, notes = images.decode_displayed(with_orientation(quadrants(), 6, "PNG"), max_pixels=10**7, min_side=1)
    assert notes == ["EXIF orientation 6 applied"]


# ---------------------------------------------------------------------------------------------
# Through the reader and process_batch: the stored size and the boxes are those of the displayed frame.


def run_jsonl(tmp_path, records, **options) -> list[dict]:
    """jsonl records -> output rows, through the reader and process_batch (the per-row path of the job, no Ray)."""
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    opts = resolve_options("jsonl", {"path": str(tmp_path / "data.jsonl"), "image_root": str(tmp_path), **options})
    rows = [r for u in tabular.units(opts) for r in tabular.read_unit(u, opts)]
    for r in rows:
        r["raw"] = json.dumps(r["raw"], sort_keys=True, ensure_ascii=False)
    return process_batch(pa.Table.from_pylist(rows, schema=RAW_SCHEMA), opts=opts, seed=0).to_pylist()


def test_pixel_boxes_and_size_are_in_the_displayed_frame(tmp_path):
    shown = quadrants(64, 48)  # displayed 64x48; on disk 48x64 with orientation 6
    (tmp_path / "phone.jpg").write_bytes(with_orientation(shown.transpose(Image.Transpose.ROTATE_90), 6, "JPEG"))
    box = [32, 0, 64, 24]  # the top-right (green) quarter, as the user saw and drew it
    (row,) = run_jsonl(tmp_path, [{"id": "r", "image_path": "phone.jpg", "question": "Which colour?", "answer": "green",
                                   "steps": [{"text": "Look top right.", "bbox": box}]}], bbox_format="xyxy_px")
    assert row["reason"] is None, row["detail"]
    assert (row["width"], row["height"]) == (64, 48)
    np.testing.assert_allclose(row["steps"][0]["bbox"], [0.5, 0.0, 1.0, 0.5], atol=1e-6)
    stored = np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGB")).astype(int)
    assert np.abs(stored[12, 48] - QUADRANTS[1]).max() <= 12  # the box holds green in what is stored


def test_image_uri_is_kept_only_when_a_plain_decode_shows_the_same(tmp_path):
    """embed_images=false hands consumers the original file, which they decode without EXIF or 16-bit care:
    such images are embedded (and meta says why) so the row and its boxes stay right."""
    (tmp_path / "plain.png").write_bytes(encoded(quadrants(), "PNG"))
    (tmp_path / "turned.png").write_bytes(with_orientation(quadrants().transpose(Image.Transpose.ROTATE_90), 6, "PNG"))
    (tmp_path / "deep.png").write_bytes(encoded(Image.fromarray(np.full((40, 40), 30000, np.uint16)), "PNG"))
    recs = [{"id": name, "image_path": f"{name}.png", "question": "What?", "answer": "x"} for name in ("plain", "turned", "deep")]
    rows = {r["source_id"]: r for r in run_jsonl(tmp_path, recs, embed_images=False)}
    assert all(r["reason"] is None for r in rows.values()), [r["detail"] for r in rows.values()]
    assert rows["plain"]["image"] is None and rows["plain"]["image_uri"] == str(tmp_path / "plain.png")
    for name, why in (("turned", "EXIF orientation 6 applied"), ("deep", "16-bit grey (I;16) scaled to 8 bits")):
        assert rows[name]["image_uri"] is None and rows[name]["image"][:4] == b"\x89PNG"
        assert json.loads(rows[name]["meta"])["image_embedded_because"] == [why]
    assert (rows["turned"]["width"], rows["turned"]["height"]) == (60, 40)
