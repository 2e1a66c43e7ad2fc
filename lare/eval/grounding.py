"""Where a model looked, against where its trace says it should have: the test-time counterpart of the
supervision every paradigm gets from the traces' step boxes.

- A paradigm that writes boxes (text_cot, crop): the IoU of each box it wrote with the trace's box of the same
  step, in order (a step it wrote no box for counts 0), and the share of steps with IoU >= 0.5 (%).
- lare: the share of each latent slot's refocus map that falls on the visual tokens of its step's box (the
  tokens the focus loss puts the target distribution on), and what a uniform map would put there (the chance
  level: the box's share of the grid), both in %. Slots map to steps as in training's final stage
  (lare.batch.slot_steps).

Accuracy alone cannot say whether a paradigm failed to find the region or failed to use it; these can.
"""

from __future__ import annotations

import math

import torch

from lare.boxes import box_iou, box_token_mask

HIT_IOU = 0.5  # a box counts as found at IoU >= 0.5, the detection convention (PASCAL VOC, RefCOCO)


def written_boxes(written: list, gold: list) -> dict | None:
    """The boxes a model wrote against the trace's boxes (steps without a box skipped on both sides, in order).
    None when the trace has no box."""
    gold = [g for g in gold if g is not None]
    if not gold:
        return None
    ious = [box_iou(w, g) if w is not None else 0.0 for w, g in zip(written + [None] * len(gold), gold)]
    return {"box_iou": sum(ious) / len(ious), "box_hit": 100 * sum(i >= HIT_IOU for i in ious) / len(ious),
            "box_steps": len(ious)}


def focus_in_box(maps: torch.Tensor, gold: list, slot_steps: list[int | None]) -> dict | None:
    """maps: [k, gh, gw] one refocus map per slot that ran; gold: the trace's step boxes (None where a step has
    none); slot_steps: the step each slot stands for. None when no slot that ran has a box."""
    k, gh, gw = maps.shape
    inside, chance = [], []
    for j in range(min(k, len(slot_steps))):
        s = slot_steps[j]
        box = gold[s] if s is not None and s < len(gold) else None
        if box is None:
            continue
        mask = box_token_mask(box, gh, gw)
        inside.append(float(maps[j].flatten()[mask].sum() / maps[j].sum().clamp_min(1e-12)))
        chance.append(float(mask.float().mean()))
    if not inside:
        return None
    return {"focus_in_box": 100 * sum(inside) / len(inside), "focus_chance": 100 * sum(chance) / len(chance),
            "focus_slots": len(inside)}


def mean_grounding(rows: list[dict | None]) -> dict:
    """Per-row grounding dicts (None: not measurable) averaged per key over the rows that have it."""
    out = {}
    for key in ("box_iou", "box_hit", "focus_in_box", "focus_chance"):
        values = [r[key] for r in rows if r and key in r]
        out[key] = sum(values) / len(values) if values else math.nan
    out["rows"] = sum(1 for r in rows if r)
    return out
