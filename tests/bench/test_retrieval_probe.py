"""bench/retrieval_probe.py's plumbing at a few steps: both answers (own image, another row's) on the same rows, the
table's numbers in the JSON. The accuracies need the full run."""

import json


def test_retrieval_probe_reports_what_the_model_takes_from_the_image(tmp_path):
    from bench import retrieval_probe

    out = tmp_path / "probe.json"
    report = retrieval_probe.main(["--steps", "3", "--test-rows", "8", "--batch-size", "4", "--train-rows", "16", "--out", str(out),
                                   "--pattern", r"What colour is the circle\?", "--freeze-vision"])
    assert json.loads(out.read_text()) == report and report["freeze_vision"] is True
    (r,) = report["results"]
    assert r["rows"] == 8 and r["steps"] == 3 and 1 <= r["answers"] <= 8
    assert 0 <= r["acc"] <= 100 and 0 <= r["other_image_acc"] <= 100
    assert r["looks"] == r["acc"] - r["other_image_acc"] and r["final_loss"] > 0
