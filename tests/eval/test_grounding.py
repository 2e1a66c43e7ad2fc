"""Where a model looked against its trace's boxes: IoU of written boxes, refocus mass on the box."""

import json

import pytest
import torch

from lare.eval.grounding import box_iou, final_slot_steps, focus_in_box, mean_grounding, written_boxes


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
def test_final_slot_steps_are_the_steps_training_supervised(adaptive):
    # The evaluation must score each slot against the box the focus loss trained it on.
    from lare.batch import build_batch
    from tests.core.test_model import build, examples
    from tests.helpers import record

    model, cfg = build("tiny-qwen2.5-vl", "lare", f"method.adaptive_stop={str(adaptive).lower()}")
    boxes = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0]]
    ex = examples([record("t", 56, 56, steps=[{"text": f"Step {i}.", "bbox": b} for i, b in enumerate(boxes)])])
    batch = build_batch(ex, model.processor, cfg)  # the final stage
    m = cfg.method
    steps = final_slot_steps(len(boxes), m.latent_steps, m.latents_per_step, m.adaptive_stop)
    from lare.boxes import box_token_mask

    gh, gw = batch.grid_hw[0].tolist()
    for j, s in enumerate(steps):
        assert torch.equal(batch.region_mask[0, j, : gh * gw], box_token_mask(boxes[s], gh, gw)), (j, s)


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
