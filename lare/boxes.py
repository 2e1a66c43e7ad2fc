"""Boxes: validation, overlap, and which merged visual tokens a box covers.

A box is normalised `[x1, y1, x2, y2]` on the original image. Qwen's dynamic resize scales each axis
of the whole image, so normalised coordinates are the same on the resized image, and the merged token
grid (h rows x w columns, one token = token_pixels x token_pixels of the resized image, 28 px for
Qwen2.5-VL) tiles it exactly. Token (i, j) covers x in [j/w, (j+1)/w), y in [i/h, (i+1)/h).
"""

from __future__ import annotations

import math

import torch


class BoxError(ValueError):
    pass


def check_box(box, where: str) -> list[float]:
    """A valid normalised box as 4 floats, or a BoxError that says what is wrong and where."""
    try:
        vals = [float(v) for v in box]
    except (TypeError, ValueError):
        raise BoxError(f"{where}: bbox must be 4 numbers [x1, y1, x2, y2], got {box!r}") from None
    if len(vals) != 4 or any(math.isnan(v) for v in vals):
        raise BoxError(f"{where}: bbox must be 4 numbers [x1, y1, x2, y2], got {box!r}")
    if any(v < 0.0 or v > 1.0 for v in vals):
        raise BoxError(f"{where}: bbox {vals} is outside [0, 1] (coordinates are normalised to the image)")
    x1, y1, x2, y2 = vals
    if x2 <= x1 or y2 <= y1:
        raise BoxError(f"{where}: bbox {vals} is degenerate (needs x1 < x2 and y1 < y2)")
    return vals


def ordered_corners(box) -> list[float]:
    """Two opposite corners [xa, ya, xb, yb], in either order, as [x1, y1, x2, y2] (possibly of zero area)."""
    return [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])]


def box_iou(a, b) -> float:
    """IoU of two normalised [x1, y1, x2, y2] boxes (0 for disjoint or degenerate ones)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_distribution(region: torch.Tensor) -> torch.Tensor:
    """Token masks [..., P] (bool or 0/1) as distributions uniform over their tokens; an empty mask stays zero.
    What the focus loss aims the refocus at, and what focus forcing and the gold_focus oracle read through."""
    region = region.float() if region.dtype == torch.bool else region
    return region / region.sum(-1, keepdim=True).clamp_min(1)


def box_token_mask(box, grid_h: int, grid_w: int) -> torch.Tensor:
    """Bool [grid_h * grid_w] (row-major, the order of the merged visual tokens): the tokens whose cell
    overlaps the box with positive area. Never empty: a box thinner than a cell still covers its cell."""
    x1, y1, x2, y2 = box
    c0 = min(int(math.floor(x1 * grid_w)), grid_w - 1)
    r0 = min(int(math.floor(y1 * grid_h)), grid_h - 1)
    c1 = max(int(math.ceil(x2 * grid_w)), c0 + 1)
    r1 = max(int(math.ceil(y2 * grid_h)), r0 + 1)
    mask = torch.zeros(grid_h, grid_w, dtype=torch.bool)
    mask[r0:r1, c0:c1] = True
    return mask.flatten()


def crop_box(image, box, min_side: int = 28):
    """The image region of a normalised box (PIL crop), grown to at least min_side pixels per side."""
    W, H = image.size
    x1, y1, x2, y2 = box[0] * W, box[1] * H, box[2] * W, box[3] * H
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = max(x2 - x1, min_side), max(y2 - y1, min_side)
    left = int(round(min(max(cx - w / 2, 0), max(W - w, 0))))
    top = int(round(min(max(cy - h / 2, 0), max(H - h, 0))))
    return image.crop((left, top, min(W, left + int(round(w))), min(H, top + int(round(h)))))
