"""The LaRe export as an MLflow model: a `pyfunc` flavour whose predict answers rows of image and question with
`LaReModel.answer`.

What `save` writes (training logs it as its run's `model` artifact, lare.train.export.publish):

    MLmodel                     signature, input example, requirements, the pyfunc flavour
    mlflow_entry.py             models from code: MLflow runs this shim to get the PythonModel, nothing is pickled
    artifacts/lare_export/      the HF-style export (LaReModel.save_pretrained: safetensors, processor with its chat
                                template, lare_config.json), unchanged, so lare-eval and from_pretrained read it too;
                                the folder keeps the export's own name (training's is lare_export)
    input_example.json, serving_input_example.json, requirements.txt, python_env.yaml, conda.yaml

Input: a pandas DataFrame with `image` (encoded bytes, a local path or a storage URI such as s3://; base64 over
REST, as MLflow encodes binary columns), `question`, and optionally `choices` (a list of strings per row).
Params: `max_new_tokens` (default: the model's own budget) and `return_refocus`. Output: one `Answer.to_dict()`
per row (answer, text, tokens, latency_s, refocus, boxes).

Loading needs the `lare` package (the project's image): requirements.txt pins its third-party dependencies,
not lare itself, which is not on PyPI (`mlflow models serve --env-manager local` in that image).
"""

from __future__ import annotations

import io
import json
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.types import DataType
from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

from lare.batch import TraceError
from lare.model import TOKEN_KEYS, LaReModel
from lare.storage import is_remote, read_bytes

EXPORT_ARTIFACT = "lare_export"  # the pyfunc artifact that holds the HF export
ENTRY = Path(__file__).with_name("mlflow_entry.py")
# What loading imports beyond lare and the standard library (lare.model, lare.storage, this module).
REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors", "pillow", "numpy", "pandas", "pyarrow", "pyyaml",
                "mlflow")


class LaRePyfunc(mlflow.pyfunc.PythonModel):
    """Loads the export once (on the GPU when there is one) and answers DataFrames of image and question."""

    def load_context(self, context) -> None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = LaReModel.from_pretrained(context.artifacts[EXPORT_ARTIFACT]).to(device).eval()

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[dict]:
        params = params or {}
        if len(model_input) == 0:
            return []
        images = [_image(v) for v in model_input["image"]]
        questions = [str(q) for q in model_input["question"]]
        choices = [_choices(v, i) for i, v in enumerate(model_input["choices"])] if "choices" in model_input else None
        try:
            answers = self.model.answer(images, questions, choices if choices and any(choices) else None,
                                        max_new_tokens=params.get("max_new_tokens") or None,
                                        return_refocus=bool(params.get("return_refocus", True)))
        except TraceError as e:  # an unreadable image or an empty question: the request's fault (HTTP 400), not ours
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(str(e)) from None
        return [a.to_dict() for a in answers]


def _image(value):
    """Bytes and local paths go to model.answer as they are; a storage URI is read through lare.storage (s3
    endpoints and credentials from the environment)."""
    if isinstance(value, str) and is_remote(value):
        return read_bytes(value)
    return value


def _choices(value, row: int) -> list[str]:
    if isinstance(value, (str, bytes)):  # iterating it would make each character an option
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(
            f"row {row}: choices must be a list of strings, got {type(value).__name__}")
    if pd.api.types.is_scalar(value) and pd.isna(value):  # None, NaN, pd.NA: a row without options
        return []
    return [str(c) for c in value]


def signature() -> ModelSignature:
    refocus_step = Object([Property("step", DataType.long), Property("grid", Array(DataType.long)),
                           Property("weights", Array(Array(DataType.double))),
                           Property("regions", Array(Array(DataType.double)))])
    inputs = Schema([ColSpec(DataType.binary, "image"), ColSpec(DataType.string, "question"),
                     ColSpec(Array(DataType.string), "choices", required=False)])
    outputs = Schema([ColSpec(DataType.string, "answer"), ColSpec(DataType.string, "text"),
                      ColSpec(Object([Property(k, DataType.long) for k in TOKEN_KEYS]), "tokens"),
                      ColSpec(DataType.double, "latency_s"), ColSpec(Array(refocus_step), "refocus"),
                      ColSpec(Array(Array(DataType.double)), "boxes")])
    params = ParamSchema([ParamSpec("max_new_tokens", DataType.long, None),
                          ParamSpec("return_refocus", DataType.boolean, True)])
    return ModelSignature(inputs, outputs, params)


def input_example() -> pd.DataFrame:
    """One row as a caller sends it: a small drawn image (a red square on white), a question and its options."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).rectangle([16, 16, 47, 47], fill="red")
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return pd.DataFrame({"image": [buf.getvalue()], "question": ["What colour is the square?"],
                         "choices": [["red", "blue"]]})


def requirements() -> list[str]:
    """The installed versions, without a local build tag (torch's +cpu / +cu128 is not on PyPI under that name)."""
    return [f"{name}=={version(name).split('+')[0]}" for name in REQUIREMENTS]


def save(export_dir: str | Path, path: str | Path, run_id: str | None = None, artifact_path: str = "model") -> Path:
    """Write the MLflow model of a LaRe export to `path` (which must not exist); MLflow copies the export into it,
    under the export folder's name (export_path reads it back). run_id and artifact_path record where the model
    will be logged (MLmodel's run_id, as MLflow's own log_model writes it)."""
    export_dir, path = Path(export_dir), Path(path)
    config = json.loads((export_dir / "lare_config.json").read_text())  # also: it is a LaRe export
    mlflow.pyfunc.save_model(
        path, python_model=str(ENTRY), artifacts={EXPORT_ARTIFACT: str(export_dir)}, signature=signature(),
        input_example=input_example(), pip_requirements=requirements(),
        metadata={"lare_paradigm": config["method"]["paradigm"]},
        mlflow_model=Model(run_id=run_id, artifact_path=artifact_path if run_id else None))
    return path


def export_path(mlmodel_text: str) -> str | None:
    """Where a LaRe MLflow model keeps its HF export, relative to the model's folder (from its MLmodel file);
    None for any other MLflow model."""
    import yaml

    try:
        flavor = (yaml.safe_load(mlmodel_text) or {}).get("flavors", {}).get("python_function", {})
        return flavor["artifacts"][EXPORT_ARTIFACT]["path"]
    except (yaml.YAMLError, AttributeError, KeyError, TypeError):
        return None
