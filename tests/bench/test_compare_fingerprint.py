"""A comparison resumes only the trials of the same config and backbone: a folder of the same name built from
other settings is refused (bench/paradigms.py) or started again (the demo), never reported as the new models."""

import json

import pytest


def _base(*overrides):
    from lare.config import load_config

    return load_config(None, ["model.backbone=tiny-qwen3-vl-pretrained", *overrides])


def test_a_changed_config_or_backbone_is_not_resumed(tmp_path, monkeypatch):
    from lare import backbone
    from lare.compare import Comparison, check_same_comparison

    root = tmp_path / "paradigms"
    args = Comparison(config=tmp_path / "unused.yaml", name="paradigms")
    check_same_comparison(str(root), args, _base())
    (root / "grid").mkdir()
    check_same_comparison(str(root), args, _base())  # the same settings: resumed
    assert (root / "grid").is_dir()
    weights = json.loads((root / "fingerprint.json").read_text())["backbone_weights"]
    assert set(weights) == {"model.safetensors"}

    with pytest.raises(SystemExit, match="another config"):
        check_same_comparison(str(root), args, _base("train.lr=0.01"))
    assert (root / "grid").is_dir(), "a refused folder is left as it was"

    rebundled = tmp_path / "bundle"
    rebundled.mkdir()
    (rebundled / "model.safetensors").write_bytes(b"other weights")
    monkeypatch.setitem(backbone.PRETRAINED, "tiny-qwen3-vl-pretrained", rebundled)
    with pytest.raises(SystemExit, match="another backbone_weights"):
        check_same_comparison(str(root), args, _base())

    demo = Comparison(config=tmp_path / "unused.yaml", name="paradigms", on_change="restart")
    check_same_comparison(str(root), demo, _base())
    assert not (root / "grid").exists() and (root / "fingerprint.json").is_file()
