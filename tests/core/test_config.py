import pytest

from lare.config import Config, ConfigError, all_keys, describe, load_config


def test_defaults_validate_and_every_field_is_described():
    cfg = load_config()
    assert cfg.method.paradigm == "lare" and cfg.final_stage == cfg.data.max_steps
    text = describe()
    for key in all_keys():
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(key + " "))
        assert line.split("):", 1)[1].strip(), f"{key} has no description"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  recon_weight: 0.25\n  latent_steps: 4\ntrain:\n  lr: 1.0e-3\n")
    cfg = load_config(path, ["method.latent_steps=8", "model.backbone=tiny-qwen3-vl", "method.pixel_decoder=true"])
    assert cfg.method.recon_weight == 0.25 and cfg.method.latent_steps == 8 and cfg.train.lr == 1e-3
    assert cfg.model.backbone == "tiny-qwen3-vl" and cfg.method.pixel_decoder is True
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert cfg.flat()["method.latent_steps"] == 8


@pytest.mark.parametrize("override, expected", [
    ("method.recon_wieght=1", "did you mean 'method.recon_weight'"),
    ("metod.top_k=3", "did you mean 'method.top_k'"),
    ("train.batchsize=3", "did you mean 'train.batch_size'"),
])
def test_unknown_key_names_it_and_suggests(override, expected):
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(None, [override])
    assert override.split("=")[0] in str(err.value)


def test_unknown_key_in_yaml_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method:\n  laten_steps: 4\n")
    with pytest.raises(ConfigError, match=r"method.laten_steps.*method.latent_steps.*bad.yaml"):
        load_config(path)


@pytest.mark.parametrize("override, expected", [
    ("method.latent_steps=four", "expects an integer"),
    ("method.paradigm=cot", "not one of"),
    ("method.pixel_decoder=maybe", "expects true/false"),
    ("method.latent_steps=0", "must be >= 1"),
    ("method.max_latent_steps=2", "must be >= method.latent_steps"),
    ("train.lr=-1", "must be > 0"),
    ("nonsense", "not of the form"),
])
def test_bad_values_are_clear_errors(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


def test_register_as_names_a_registry_entry():
    assert load_config(None, ["tracking.register_as=lare-tiny"]).tracking.register_as == "lare-tiny"
    with pytest.raises(ConfigError, match="tracking.register_as needs tracking.enabled"):
        load_config(None, ["tracking.register_as=lare-tiny", "tracking.enabled=false"])
    for bad in ("team/lare", "lare@prod", " lare"):
        with pytest.raises(ConfigError, match="break models:/NAME/VERSION"):
            load_config(None, [f"tracking.register_as={bad}"])


def test_numbers_in_exponent_form():
    assert load_config(None, ["train.lr=5e-3"]).train.lr == 5e-3


def test_string_fields_keep_text():
    cfg = load_config(None, ["train.experiment=007", "data.traces_dir=s3://bucket/traces"])
    assert cfg.train.experiment == "007" and cfg.data.traces_dir == "s3://bucket/traces"


def test_relative_paths_become_absolute_for_workers(tmp_path):
    cfg = load_config(None, ["data.traces_dir=data/traces", "tracking.uri=sqlite:///mlflow.db",
                             "train.storage_path=s3://bucket/runs", "data.mixture={data/a: 1.0, s3://b/c: 0.5}"])
    resolved = cfg.with_absolute_paths(tmp_path)
    assert resolved.data.traces_dir == str(tmp_path / "data" / "traces")
    assert resolved.tracking.uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolved.train.storage_path == "s3://bucket/runs"
    assert resolved.data.mixture == {str(tmp_path / "data" / "a"): 1.0, "s3://b/c": 0.5}
    assert resolved.model.backbone == "tiny-qwen2.5-vl"  # a preset, not a path
