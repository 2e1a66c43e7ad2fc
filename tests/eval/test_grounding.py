"""Where a model looked against its trace's boxes: IoU of written boxes, refocus mass on the box."""

import json

import pytest
import torch

from lare.boxes import box_iou
from lare.eval.grounding import focus_in_box, mean_grounding, written_boxes


def test_box_iou_on_hand_computed_boxes():
    assert box_iou([0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]) == pytest.approx(1.0)
    assert box_iou([0, 0, 0.5, 0.5], [0.25, 0, 0.75, 0.5]) == pytest.approx(1 / 3)  # half overlaps: 1/8 of 3/8
    assert box_iou([0, 0, 0.2, 0.2], [0.5, 0.5, 1, 1]) == 0.0
    assert box_iou([0.3, 0.3, 0.3, 0.6], [0.3, 0.3, 0.3, 0.6]) == 0.0  # zero area: nothing to overlap


def test_written_boxes_match_steps_in_order_and_a_missing_box_counts_zero():
    gold = [[0, 0, 0.5, 0.5], None, [0.5, 0.5, 1, 1]]
    assert written_boxes([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], gold) == {"box_iou": 1.0, "box_hit": 100.0, "box_steps": 2}
    one = written_boxes([[0.5, 0.5, 1, 1]], gold)  # the right region, but written for the wrong step
    assert one["box_iou"] == 0.0 and one["box_hit"] == 0.0
    assert written_boxes([], gold)["box_iou"] == 0.0
    assert written_boxes([[0, 0, 1, 1]], [None]) is None


def test_focus_in_box_is_100_on_the_box_and_chance_when_uniform():
    gold = [[0.0, 0.0, 0.5, 0.5]]  # the top-left quarter of a 4 x 4 grid: 4 cells
    on_box = torch.zeros(2, 4, 4)
    on_box[:, :2, :2] = 0.25
    got = focus_in_box(on_box, gold, [0, 0])
    assert got["focus_in_box"] == pytest.approx(100.0) and got["focus_chance"] == pytest.approx(25.0)
    uniform = torch.full((2, 4, 4), 1 / 16)
    assert focus_in_box(uniform, gold, [0, 0])["focus_in_box"] == pytest.approx(25.0)
    assert focus_in_box(on_box, [None], [0, 0]) is None  # no box, nothing to measure
    assert focus_in_box(on_box, gold, [None, None]) is None


def test_mean_grounding_averages_each_measure_over_the_rows_that_have_it():
    m = mean_grounding([{"box_iou": 0.2, "box_hit": 0.0}, None, {"box_iou": 0.6, "box_hit": 100.0}])
    assert m["box_iou"] == pytest.approx(0.4) and m["box_hit"] == 50.0 and m["rows"] == 2
    assert m["focus_in_box"] != m["focus_in_box"]  # NaN: no row refocused


@pytest.mark.parametrize("adaptive", [False, True])
def test_slot_steps_are_the_steps_whose_boxes_supervise_the_slots(adaptive):
    # The evaluation scores each slot against the box the focus loss trained it on: both read lare.batch.slot_steps.
    from lare.batch import build_batch, slot_steps
    from lare.boxes import box_token_mask
    from tests.core.test_model import build, examples
    from tests.helpers import record

    model, cfg = build("tiny-qwen2.5-vl", "lare", f"method.adaptive_stop={str(adaptive).lower()}")
    boxes = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0]]
    ex = examples([record("t", 56, 56, steps=[{"text": f"Step {i}.", "bbox": b} for i, b in enumerate(boxes)])])
    batch = build_batch(ex, model.processor, cfg)  # the final stage
    steps = slot_steps(len(boxes), cfg)
    m = cfg.method
    assert len(steps) == (min(3 * m.latents_per_step, m.latent_steps) if adaptive else m.latent_steps)
    assert steps == sorted(steps) and set(steps) == {0, 1, 2}  # in order, every step gets a slot
    gh, gw = batch.grid_hw[0].tolist()
    for j, s in enumerate(steps):
        assert torch.equal(batch.region_mask[0, j, : gh * gw], box_token_mask(boxes[s], gh, gw)), (j, s)
    assert slot_steps(3, cfg, stage=1) == [0] * m.latents_per_step  # stage 1: only the first step is latent


def test_evaluation_reports_where_each_paradigm_looked():
    from lare.eval.inference import run_inference
    from lare.eval.readers import EvalItem
    from lare.eval.report import summarize
    from tests.core.test_model import build, script_outputs
    from tests.helpers import png_bytes

    gold = {"step_boxes": [[0.5, 0.0, 1.0, 0.5], None]}
    item = EvalItem("refocus", "i0", "Hi?", [], "red", png_bytes(56, 56), {**gold, "family": "attribute", "split": "test"})
    model, _ = build("tiny-qwen2.5-vl", "text_cot")
    p = model.processor
    script_outputs(model, [p.box_start_id, *p.encode("(500,0),(1000,500)"), p.box_end_id, *p.encode("\nAnswer: red"),
                           p.im_end_id])
    (row,) = run_inference(model, [item], use_ray=False)
    assert json.loads(row["grounding"]) == {"box_iou": 1.0, "box_hit": 100.0, "box_steps": 1}
    results, predictions = summarize("text_cot", "text_cot", {"refocus": [item]}, [row])
    assert results[0]["grounding"]["box_iou"] == 1.0 and predictions[0]["grounding"]["box_hit"] == 100.0

    lare, _ = build("tiny-qwen2.5-vl", "lare")
    (row,) = run_inference(lare, [item], use_ray=False)
    g = json.loads(row["grounding"])
    assert 0.0 <= g["focus_in_box"] <= 100.0 and g["focus_chance"] == pytest.approx(25.0) and g["focus_slots"] >= 1
    pope = EvalItem("pope", "p0", "Hi?", [], "yes", png_bytes(56, 56))
    (row,) = run_inference(lare, [pope], use_ray=False)
    assert row["grounding"] == "null"  # no trace, nothing to measure against


def test_gold_focus_makes_each_slot_read_through_its_steps_box():
    from lare.batch import build_batch, slot_steps
    from lare.boxes import box_token_mask
    from lare.model.generate import _gold_focus
    from lare.model.sequence import Prompt
    from tests.core.test_model import build, examples
    from tests.helpers import record

    model, cfg = build("tiny-qwen2.5-vl", "lare", "method.refocus_heads=1")  # one head: its map is the mean
    model.eval()
    boxes = [[0.0, 0.0, 0.5, 0.5], None, [0.5, 0.5, 1.0, 1.0]]
    ex = examples([record("g", 112, 112, steps=[{"text": f"Step {i}.", "bbox": b} for i, b in enumerate(boxes)])])
    prompt = build_batch([ex[0]], model.processor, cfg, prompt_only=True)
    state = Prompt(model.vlm, model.processor.image_token_id, prompt, prompt.input_ids.shape[1], True)
    visual = state.visual
    K = cfg.method.latent_steps
    gold = _gold_focus(prompt, visual, K, cfg)                     # [B, K, P]
    gh, gw = visual.grid_hw[0].tolist()
    for j, s in enumerate(slot_steps(3, cfg)):
        if boxes[s] is None:  # no box: a zero row, the slot keeps its own map
            assert gold[0, j].sum() == 0
        else:
            mask = box_token_mask(boxes[s], gh, gw)
            assert torch.allclose(gold[0, j, : gh * gw][mask], torch.full((int(mask.sum()),), 1 / mask.sum()))
            assert gold[0, j, : gh * gw][~mask].sum() == 0
    # The slot reads through the map it is given, and reports its own: given its own map, nothing changes.
    h = state.hidden[:, -1]
    own = model.latent_input(h, visual)
    same = model.latent_input(h, visual, gold=own.refocus_map)
    boxed = model.latent_input(h, visual, gold=gold[:, 0])
    assert torch.allclose(same.z, own.z, atol=1e-6) and not torch.allclose(boxed.z, own.z)
    assert torch.equal(boxed.refocus_map, own.refocus_map)
    with torch.no_grad():
        assert not torch.allclose(model(prompt, mode="generate", ablation="gold_focus").latents[0],
                                  model(prompt, mode="generate").latents[0])
    from lare.eval.inference import ModelPredictor

    with pytest.raises(ValueError, match="do not apply"):
        ModelPredictor(model=build("tiny-qwen2.5-vl", "crop")[0], ablations=["gold_focus"])
