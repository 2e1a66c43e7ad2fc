"""The tiny presets can represent where things are: rotary positions that separate the rows and the columns of
the visual grid, and (Qwen3-VL) a vision tower whose tokens know where they sit."""

import pytest
import torch

from lare.backbone import PRESETS, load_backbone, rope_grid_separation
from lare.config import load_config

# Every pair of distinct rows and of distinct columns of a 16 x 16 grid (a 448-px image) at least this far apart.
# The real Qwen3-VL-4B/8B layout gives 0.88 (rows) and 0.70 (columns); the old tiny presets gave 0.105 / 0.003.
MIN_SEPARATION = 0.5


def _backbone(name):
    return load_backbone(load_config(None, [f"model.backbone={name}"]).model)[0]


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_rotary_positions_separate_rows_and_columns(name):
    sep = rope_grid_separation(_backbone(name), grid=16)
    assert sep["rows"] >= MIN_SEPARATION and sep["columns"] >= MIN_SEPARATION, sep


def test_the_measure_reproduces_the_real_layouts():
    """The same measure on the published architectures (meta device: no weights): Qwen3-VL's interleaved M-RoPE
    separates both axes, Qwen2.5-VL's sectioned one hardly (its columns get the slowest frequencies)."""
    q3 = load_backbone(load_config(None, ["model.backbone=random-qwen3-vl-4b"]).model, device="meta")[0]
    q25 = load_backbone(load_config(None, ["model.backbone=random-qwen2.5-vl-3b"]).model, device="meta")[0]
    for model in (q3, q25):  # the inverse frequencies are buffers computed at init: rebuild them on the CPU
        rotary = model.model.language_model.rotary_emb
        inv_freq, _ = rotary.compute_default_rope_parameters(rotary.config)
        rotary.inv_freq = inv_freq
        rotary.attention_scaling = 1.0
    real3, real25 = rope_grid_separation(q3), rope_grid_separation(q25)
    assert real3["rows"] > 0.8 and real3["columns"] > 0.65, real3
    assert real25["rows"] < 0.1 and real25["columns"] < 0.01, real25


def _grey_image_tokens(name):
    from PIL import Image

    model, processor = load_backbone(load_config(None, [f"model.backbone={name}"]).model)
    inputs = processor.image_processor(images=[Image.new("RGB", (224, 224), (120, 120, 120))], return_tensors="pt")
    with torch.no_grad():
        tokens = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output[0]
    dist = torch.cdist(tokens, tokens) / tokens.norm(dim=-1).mean()
    return dist[~torch.eye(len(tokens), dtype=torch.bool)].min()


def test_qwen3_vision_tokens_know_their_position():
    """A uniform grey image: every patch is the same, so only absolute position embeddings can make two visual
    tokens differ. Qwen3-VL's learned ones do; Qwen2.5-VL's tower (relative 2-D RoPE only, like the real one)
    gives every token the same vector, and its positions come from M-RoPE alone."""
    assert _grey_image_tokens("tiny-qwen3-vl") > 1e-2
    assert _grey_image_tokens("tiny-qwen2.5-vl") < 1e-4


def test_presets_are_listed():
    assert {"tiny-qwen2.5-vl", "tiny-qwen3-vl"} <= set(PRESETS)
