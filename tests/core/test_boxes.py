import random

import pytest
import torch
from PIL import Image

from lare.boxes import BoxError, box_token_mask, check_box, crop_box
from lare.config import ModelConfig
from lare.backbone import load_backbone


def brute_force(box, width, height, processor):
    """Resize as the processor does, then mark every merged token with a resized pixel inside the box."""
    _, grid = processor.images([Image.new("RGB", (width, height))])
    gh, gw = (grid[0, 1:] // processor.merge_size).tolist()
    side = processor.token_pixels
    H, W = gh * side, gw * side  # the resized image
    x1, y1, x2, y2 = box[0] * W, box[1] * H, box[2] * W, box[3] * H
    mask = torch.zeros(gh, gw, dtype=torch.bool)
    for i in range(gh):
        for j in range(gw):  # positive-area overlap of the token's pixel square with the box
            if min(x2, (j + 1) * side) - max(x1, j * side) > 0 and min(y2, (i + 1) * side) - max(y1, i * side) > 0:
                mask[i, j] = True
    if not mask.any():
        mask[min(int(y1 // side), gh - 1), min(int(x1 // side), gw - 1)] = True
    return gh, gw, mask.flatten()


@pytest.mark.parametrize("backbone", ["tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_box_to_tokens_matches_pixels_for_any_size(backbone):
    _, processor = load_backbone(ModelConfig(backbone=backbone))
    rng = random.Random(0)
    for _ in range(40):
        w, h = rng.randint(30, 600), rng.randint(30, 600)
        x1, x2 = sorted(rng.uniform(0, 1) for _ in range(2))
        y1, y2 = sorted(rng.uniform(0, 1) for _ in range(2))
        if x2 - x1 < 1e-3 or y2 - y1 < 1e-3:
            continue
        box = [x1, y1, x2, y2]
        gh, gw, expected = brute_force(box, w, h, processor)
        assert torch.equal(box_token_mask(box, gh, gw), expected), (w, h, box)


def test_box_to_tokens_hand_checked():
    # 224x112 image on Qwen2.5-VL: 8 x 4 tokens of 28 px. The box covers x in [28, 84) px, y in [0, 28) px.
    mask = box_token_mask([0.125, 0.0, 0.375, 0.25], grid_h=4, grid_w=8).view(4, 8)
    expected = torch.zeros(4, 8, dtype=torch.bool)
    expected[0, 1:3] = True
    assert torch.equal(mask, expected)
    # A box thinner than one token still covers its token; the whole image covers everything.
    assert box_token_mask([0.5, 0.5, 0.501, 0.501], 4, 8).sum() == 1
    assert box_token_mask([0, 0, 1, 1], 4, 8).all()


@pytest.mark.parametrize("box, message", [
    ([0.1, 0.2, 1.2, 0.5], "outside"),
    ([-0.1, 0.2, 0.5, 0.5], "outside"),
    ([0.5, 0.2, 0.5, 0.6], "degenerate"),
    ([0.5, 0.7, 0.6, 0.6], "degenerate"),
    ([0.1, 0.2, 0.3], "4 numbers"),
    ("abc", "4 numbers"),
])
def test_bad_boxes(box, message):
    with pytest.raises(BoxError, match=message):
        check_box(box, "record x: field 'steps[0].bbox'")


def test_crop_box_grows_small_boxes_inside_the_image():
    image = Image.new("RGB", (200, 100))
    assert crop_box(image, [0.0, 0.0, 0.5, 1.0]).size == (100, 100)
    small = crop_box(image, [0.99, 0.99, 1.0, 1.0], min_side=28)
    assert small.size == (28, 28)


def test_refocus_positions_are_relative_to_each_grid():
    from lare.model.heads import POSITION_FEATURES, position_features

    feats = position_features(torch.tensor([[2, 4], [4, 8]]), P=32)
    assert feats.shape == (2, 32, POSITION_FEATURES)
    assert feats[0, 8:].abs().sum() == 0  # padding beyond the 2x4 grid stays zero
    # the top-left token of a 2x4 grid is centred at (1/8, 1/4); on a 4x8 grid that point is a token corner,
    # but the bottom-right tokens of both grids sit on the same side: compare their x, y at the first band
    x_small, x_large = feats[0, 7, 0], feats[1, 31, 0]   # sin(pi * x) of the last column
    assert torch.isclose(x_small, torch.sin(torch.tensor(torch.pi * 7 / 8))) and torch.isclose(
        x_large, torch.sin(torch.tensor(torch.pi * 15 / 16)))
