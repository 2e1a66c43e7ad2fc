"""Pretrain the bundled tiny backbone so that it sees: `python jobs/pretrain.py [--stage a|b|all] [key=value ...]`.

Stage A (lare/pretrain.py): the vision tower learns, from dense per-token labels of generated scenes, the shape and
colour of what covers each merged token, the token's row and column and its object's box; a one-worker Ray Train run with checkpoints
(re-running resumes; --stage-a-init warm-restarts from an earlier tower, and the card then lists both runs).
Stage B: the whole model learns paradigm-neutral grounding ("What is at <box>?", "Where is the red circle?",
"List the objects in the top-left quarter.") with the training job itself (paradigm direct, the `grounding`
family of the refocus source), starting from stage A's backbone.

Then the probes on held-out scenes (another seed): per-object shape and colour accuracy of stage A's linear
probe on the final vision tower, answer accuracy of "What is at <box>?" and box IoU of "Where is ...?". With
--bundle the backbone, its probe heads and a model card (command, seeds, steps, wall time, probes) are written
to lare/assets/tiny-qwen3-vl-pretrained, the folder the preset `tiny-qwen3-vl-pretrained` loads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from lare.backbone import PRETRAINED
from lare.cli import add_job_flags, main_guard, ray_for, run_cli, start
from lare.config import load_config
from pipelines.sources.refocus import SHAPES

log = logging.getLogger("lare.pretrain")
ROOT = Path(__file__).resolve().parents[2]  # the checkout: stage B's config and the default tracking store
BUNDLE = PRETRAINED["tiny-qwen3-vl-pretrained"]
STAGE_B_CONFIG = ROOT / "configs" / "pretrain-grounding.yaml"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="jobs/pretrain.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("a", "b", "all"), default="all")
    ap.add_argument("--out", default="runs/pretrain", help="working folder: checkpoints, traces, the stage outputs")
    ap.add_argument("--seed", type=int, default=0, help="data seed of both stages (the probes use seed + 1000)")
    ap.add_argument("--stage-a-steps", type=int, default=6000)
    ap.add_argument("--stage-a-batch", type=int, default=32)
    ap.add_argument("--stage-a-lr", type=float, default=2e-3)
    ap.add_argument("--stage-a-cpus", type=int, default=2, help="threads of the stage A worker")
    ap.add_argument("--stage-a-init", default="", metavar="DIR",
                    help="warm restart: start stage A from this backbone folder's vision tower and probe heads "
                         "(e.g. an earlier bundle) instead of the preset's random weights")
    ap.add_argument("--bundle", action="store_true", help="write the result into the package (lare/assets)")
    ap.add_argument("--bundle-from", choices=("a", "b"), default="b",
                    help="which stage's backbone to bundle: b (both stages) or a (the vision tower trained, the LM not)")
    ap.add_argument("--probe-scenes", type=int, default=512)
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of stage B's config (configs/pretrain-grounding.yaml)")
    add_job_flags(ap)
    return ap.parse_args(argv)


def stage_a(args, out: Path) -> dict:
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from lare.pretrain import StageA, stage_a_per_worker
    from lare.train.launch import worker_env_vars
    from lare.tracking import open_run, resolve_uri

    cfg = load_config(None, ["model.backbone=tiny-qwen3-vl", f"train.cpus_per_worker={args.stage_a_cpus}",
                             f"train.experiment=pretrain-stage-a-seed{args.seed}", f"tracking.uri={_tracking(args)}"])
    init = str(Path(args.stage_a_init).resolve()) if args.stage_a_init else ""
    if init and not (Path(init) / "config.json").is_file():
        raise SystemExit(f"error: --stage-a-init {args.stage_a_init}: no backbone (config.json) there")
    stage = StageA(steps=args.stage_a_steps, batch_size=args.stage_a_batch, lr=args.stage_a_lr, seed=args.seed,
                   init_from=init)
    uri = resolve_uri(cfg)
    run_id = open_run(cfg, uri, str(out / "stage_a_mlflow_run_id"), experiment="lare-pretrain")
    trainer = TorchTrainer(
        stage_a_per_worker,
        train_loop_config={"config": cfg.to_dict(), "stage_a": vars(stage), "out": str(out / "stage_a"),
                           "probe_seed": args.seed + 1000, "mlflow_uri": uri, "mlflow_run_id": run_id},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=RunConfig(name=cfg.train.experiment, storage_path=str(out / "runs"),
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             worker_runtime_env={"env_vars": worker_env_vars()}))
    t0 = time.time()
    trainer.fit()
    probes = json.loads((out / "stage_a" / "probe" / "stage_a.json").read_text())
    return {"steps": stage.steps, "batch_size": stage.batch_size, "lr": stage.lr, "wall_s": round(time.time() - t0),
            "init_from": args.stage_a_init or None, "restart_of": _lineage(init), "shapes": list(SHAPES),
            **{k: v for k, v in probes.items() if k.startswith("probe_")}}


def _lineage(init: str) -> dict | None:
    """What a warm restart started from: the earlier stage A as its own pretrain.json recorded it (steps, wall time,
    probes, the commands that built it), so the card of the result accounts for the whole budget."""
    record = Path(init) / "pretrain.json" if init else None
    if record is None or not record.is_file():
        return None
    before = json.loads(record.read_text())
    return {"commands": before.get("commands", []), **before.get("stage_a", {})}


def stage_b(args, out: Path) -> dict:
    from lare.storage import redact
    from lare.train.launch import make_plan, make_trainer, prepare_data, storage
    from lare.tracking import open_run, resolve_uri

    cfg = load_config(STAGE_B_CONFIG, [f"model.backbone={out / 'stage_a'}", f"data.traces_dir={out / 'traces'}",
                                       f"train.storage_path={out / 'runs'}", f"train.seed={args.seed}",
                                       f"tracking.uri={_tracking(args)}", *args.overrides]).with_absolute_paths()
    if not (out / "stage_a" / "config.json").is_file():
        raise SystemExit(f"error: no stage A backbone in {out / 'stage_a'}; run --stage a first")
    uri = resolve_uri(cfg)
    manifest, dataset, rows = prepare_data(cfg)
    run_id = open_run(cfg, uri, f"{storage(cfg)[2]}/mlflow_run_id", experiment="lare-pretrain")
    plan = make_plan(cfg, rows, manifest=manifest, mlflow_uri=uri, mlflow_run_id=run_id)
    t0 = time.time()
    result = make_trainer(plan, dataset).fit()
    log.info("stage B done: %s", {k: result.metrics.get(k) for k in ("step", "val_accuracy")})
    return {"steps": result.metrics.get("step"), "rows": rows, "wall_s": round(time.time() - t0),
            "families": cfg.data.source_options.get("families", "grounding"),
            "export": redact(plan.export_uri), "val_accuracy": result.metrics.get("val_accuracy"),
            "config": str(STAGE_B_CONFIG.relative_to(ROOT)), "overrides": args.overrides}


def _tracking(args) -> str:
    """Both stages log where stage B's config says (a tracking.uri override included), else $MLFLOW_TRACKING_URI,
    else the repository's mlflow.db."""
    given = [o.split("=", 1)[1] for o in args.overrides if o.startswith("tracking.uri=")]
    return (given[-1] if given else "") or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(ROOT / 'mlflow.db').resolve()}"


@main_guard
def main(argv=None) -> dict:
    args = parse_args(argv)
    start(args.verbose)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary.setdefault("commands", []).append(
        "python jobs/pretrain.py " + " ".join(sys.argv[1:] if argv is None else argv))  # every invocation that built it
    with ray_for((os.cpu_count() or 1) + 2, args.verbose):
        if args.stage in ("a", "all"):
            before = summary.get("stage_a", {})
            summary["stage_a"] = stage_a(args, out)
            if before.get("steps") == summary["stage_a"]["steps"]:  # a resumed run: the wall time of every invocation
                summary["stage_a"]["wall_s"] += before.get("wall_s", 0)
            summary_path.write_text(json.dumps(summary, indent=1))
        if args.stage in ("b", "all"):
            before = summary.get("stage_b", {})
            summary["stage_b"] = stage_b(args, out)
            if before.get("steps") == summary["stage_b"]["steps"]:  # resumed (e.g. re-run with --bundle): every invocation's time
                summary["stage_b"]["wall_s"] += before.get("wall_s", 0)
            summary_path.write_text(json.dumps(summary, indent=1))
    from lare.pretrain import grounding_probes, vision_probes

    probe_dir = out / "stage_a" / "probe"
    if args.stage in ("b", "all"):
        export = out / "runs" / load_config(STAGE_B_CONFIG, args.overrides).train.experiment / "export"
        summary["stage_b"]["probes"] = {**vision_probes(export, probe_dir, seed=args.seed + 1000, scenes=args.probe_scenes),
                                        **grounding_probes(export, seed=args.seed + 1000)}
    if args.stage in ("a", "all"):
        summary["stage_a"]["probes"] = vision_probes(out / "stage_a", probe_dir, seed=args.seed + 1000,
                                                     scenes=args.probe_scenes)
    summary["seed"] = args.seed
    summary_path.write_text(json.dumps(summary, indent=1))
    if args.bundle:
        stage = args.bundle_from
        if f"stage_{stage}" not in summary or "probes" not in summary[f"stage_{stage}"]:
            raise SystemExit(f"error: --bundle-from {stage}: stage {stage.upper()} has not run in {out}")
        summary["bundled"], summary["probes"] = stage, summary[f"stage_{stage}"]["probes"]
        bundle(out / "stage_a" if stage == "a" else export, probe_dir, summary)
    print(json.dumps(summary, indent=1))
    return summary


def bundle(export: Path, probe_dir: Path, summary: dict) -> None:
    """The backbone as the preset loads it: HF weights and processor files, the stage-A probe heads, a model card."""
    from lare.pretrain import model_card

    if BUNDLE.exists():
        shutil.rmtree(BUNDLE)
    BUNDLE.mkdir(parents=True)
    for f in export.iterdir():
        if f.is_file() and not f.name.startswith("lare_"):  # the backbone alone: no LaRe heads, no LaRe config
            shutil.copy2(f, BUNDLE / f.name)
    from safetensors.torch import load_file, save_file

    probe = {k: v for k, v in load_file(probe_dir / "stage_a.safetensors").items() if k.startswith("probe.")}
    save_file(probe, BUNDLE / "probe.safetensors")
    (BUNDLE / "pretrain.json").write_text(json.dumps(summary, indent=1))
    (BUNDLE / "README.md").write_text(model_card(summary))
    log.info("bundled into %s", BUNDLE)


def run() -> None:
    """jobs/pretrain.py."""
    run_cli(main)
