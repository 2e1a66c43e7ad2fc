"""The real-scale configs: they load through the one validated config and say what a multi-node H100 run needs.
The Ray Serve config (infra/serve/lare.yaml): valid for Ray's own ServeDeploySchema, strictly, and in step with
the application builder's arguments and the model the default training exports."""

from __future__ import annotations

import copy
import math

import pytest
import yaml

from infra_helpers import REPO
from lare.config import all_keys, load_config

from infra.k8s import check

REAL = ["configs/qwen2.5-vl-7b.yaml", "configs/qwen3-vl-8b.yaml"]
SERVE_CONFIG = REPO / "infra" / "serve" / "lare.yaml"
# What the config gives lare.serve.app:app_builder: a renamed or dropped argument must change the config too.
BUILDER_ARGS = {"model", "max_batch_size", "batch_wait_timeout_s", "max_tokens_limit", "image_root",
                "max_image_bytes", "max_body_bytes", "num_gpus", "num_replicas"}


@pytest.mark.parametrize("path", REAL)
def test_real_config_values(path):
    cfg = load_config(REPO / path)
    t, m, d = cfg.train, cfg.model, cfg.data
    assert m.backbone.startswith("/models/") and m.dtype == "bfloat16"
    assert t.use_gpu and t.mixed_precision == "bf16" and t.activation_checkpointing and t.parallelism in ("auto", "hsdp")
    assert t.num_workers % 8 == 0 and t.num_workers >= 16                 # whole 8-GPU nodes, multi-node
    assert 5e-6 <= t.lr <= 2e-5 and t.warmup_steps > 0
    assert t.batch_size % t.grad_accum == 0
    assert t.storage_path.startswith("s3://") and t.max_failures >= 1
    assert cfg.tracking.uri == ""                                          # MLFLOW_TRACKING_URI from the pod env
    assert set(d.mixture) == {"s3://lare-ml/traces/visual_cot", "s3://lare-ml/traces/gqa"}
    assert abs(sum(d.mixture.values()) - 1.0) < 1e-9
    assert t.num_stages == -1 and t.start_stage == 0 and t.epochs_per_stage >= 1  # the full curriculum
    assert cfg.method.paradigm == "lare" and cfg.method.latent_steps >= d.max_steps


@pytest.mark.parametrize("path", REAL)
def test_real_config_sets_every_key_explicitly_and_nothing_unknown(path):
    raw = yaml.safe_load((REPO / path).read_text())
    flat = {f"{s}.{k}" for s, sec in raw.items() for k in sec}
    assert flat <= set(all_keys())
    # Production configs spell out what they rely on, so a changed default cannot silently change a run.
    essential = {"model.backbone", "model.dtype", "model.max_pixels", "train.num_workers", "train.use_gpu",
                 "train.mixed_precision", "train.batch_size", "train.grad_accum", "train.lr", "train.storage_path",
                 "train.activation_checkpointing", "train.epochs_per_stage", "train.num_stages",
                 "method.latent_steps", "method.latents_per_step", "data.mixture", "data.max_steps"}
    assert essential <= flat, essential - flat


@pytest.fixture
def serve_config() -> dict:
    (doc,) = check.load_docs(SERVE_CONFIG)
    return doc


def test_serve_config_passes_rays_own_schema(serve_config):
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(serve_config)
    assert check.validate_serve_config(serve_config) == []  # and no key Ray would silently drop
    (app,) = schema.applications
    assert app.import_path == "lare.serve.app:app_builder" and app.route_prefix == "/"
    assert set(app.args) == BUILDER_ARGS
    from lare.serve.app import DEFAULTS, app_builder

    assert BUILDER_ARGS <= set(DEFAULTS) | {"model", "name"}  # the builder knows every one of them
    assert app_builder(dict(app.args)) is not None  # and accepts these values (binding loads no model)
    assert app.deployment_names == ["LaReServer"]
    assert schema.http_options.host == "127.0.0.1" and schema.http_options.port == 8000  # loopback: no auth
    assert "runtime_env" not in serve_config["applications"][0]  # nothing Ray would write to its logs


def test_serve_config_check_can_fail(serve_config):
    app = lambda c: c["applications"][0]  # noqa: E731
    dep = lambda c: app(c)["deployments"][0]  # noqa: E731
    cases = {
        "num_cpu: not a field of Ray's RayActorOptionsSchema": lambda c: dep(c)["ray_actor_options"].update(num_cpu=2),
        "http_options.hots: not a field": lambda c: c["http_options"].update(hots="0.0.0.0"),
        "applications.0.deployment: not a field": lambda c: app(c).update(deployment=[]),
        "Manually setting num_replicas is not allowed": lambda c: dep(c).update(autoscaling_config={"max_replicas": 2}),
        "set host in the top level deploy config only": lambda c: app(c).update(host="0.0.0.0"),
        "max_ongoing_requests: Input should be greater than 0": lambda c: dep(c).update(max_ongoing_requests=0),
        "applications: Field required": lambda c: c.pop("applications"),
        "proxy_location: Input should be": lambda c: c.update(proxy_location="Everywhere"),
    }
    for expected, mutate in cases.items():
        bad = copy.deepcopy(serve_config)
        mutate(bad)
        errors = check.validate_serve_config(bad)
        assert expected in " | ".join(errors), (expected, errors)


def test_serve_config_arguments_agree_with_its_deployment_and_the_default_training(serve_config):
    (app,) = serve_config["applications"]
    args, (dep,) = app["args"], app["deployments"]
    # The builder's num_gpus / num_replicas and the config's override of them must say the same thing: the
    # override wins, and a replica that asks for no GPU cannot use one.
    assert args["num_gpus"] == dep["ray_actor_options"]["num_gpus"]
    assert args["num_replicas"] == dep["num_replicas"]
    assert dep["max_ongoing_requests"] >= 2 * args["max_batch_size"]  # a full batch decoding, the next one filling
    assert 0 < args["batch_wait_timeout_s"] < 1
    # A request with one image at the limit, base64 in JSON (4/3), still fits the body limit.
    assert args["max_body_bytes"] >= math.ceil(args["max_image_bytes"] * 4 / 3) + 64 * 1024
    cfg = load_config()  # the bundled preset `lare-train` runs without --config
    assert args["model"] == f"{cfg.train.storage_path}/{cfg.train.experiment}/export"
    assert args["max_tokens_limit"] >= cfg.data.max_new_tokens
    assert args["image_root"] is None  # reading server files by path is opt-in


def test_serve_config_says_how_to_use_it():
    head = [line for line in SERVE_CONFIG.read_text().splitlines() if line.startswith("#")]
    text = "\n".join(head)
    for needed in ("serve run infra/serve/lare.yaml", "serve deploy infra/serve/lare.yaml --address",
                   "127.0.0.1", "0.0.0.0", "infra/k8s/serve/rayservice.yaml"):
        assert needed in text, needed
