"""The end of a run: the HF-style export (loadable in one process without Ray) uploaded next to the checkpoints,
and the run's record in MLflow (config, validation table, data manifest, and the export as an MLflow model,
registered when tracking.register_as names it)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch

from lare.storage import redact, upload_dir
from lare.tracking import redacted_config
from lare.train.plan import RunPlan

log = logging.getLogger("lare.train")


def export(full_state: dict[str, torch.Tensor], cfg, out_dir: Path) -> Path:
    """The HF-style directory (backbone, processor, LaRe heads, lare_config.json) of a gathered state."""
    from lare.model import LaReModel

    model = LaReModel.build(cfg)
    missing, unexpected = model.load_state_dict(full_state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"export: state does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.save_pretrained(out_dir)
    return out_dir


def publish(full_state: dict[str, torch.Tensor], plan: RunPlan, logger=None, val_rows: list[dict] = ()) -> str:
    """Rank 0: export to plan.export_uri and, with a logger, record the run's artifacts; the run's `model` artifact is
    an MLflow model (lare.mlflow_model) holding the export. Returns the export URI."""
    public = redacted_config(plan.config)  # lare_config.json and config.yaml hold no credential (as the params)
    with tempfile.TemporaryDirectory(prefix="lare-export-") as tmp:
        tmp = Path(tmp)
        exported = export(full_state, public, tmp / "lare_export")
        upload_dir(exported, plan.export_uri)
        if logger is not None:
            from lare.mlflow_model import save as save_mlflow_model  # MLflow is imported on rank 0 only

            (tmp / "config.yaml").write_text(public.to_yaml())
            (tmp / "validation.json").write_text(json.dumps(list(val_rows), indent=1))
            logger.artifacts(tmp / "config.yaml")
            logger.artifacts(tmp / "validation.json")
            if plan.manifest:
                (tmp / "manifest.json").write_text(redact(plan.manifest))
                logger.artifacts(tmp / "manifest.json", "data")
            save_mlflow_model(exported, tmp / "model", run_id=logger.run_id, artifact_path="model")
            shutil.rmtree(exported)  # the MLflow model holds its own copy: a real model's weights not twice on disk
            if logger.artifacts(tmp / "model", "model") and public.tracking.register_as:
                registered = logger.register(public.tracking.register_as, "model")
                if registered:
                    log.info("registered the model as %s", registered)
    return plan.export_uri

