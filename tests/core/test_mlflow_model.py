"""The export as an MLflow model (lare.mlflow_model), logged and registered the way a training run ends
(lare.train.export.publish), into a SQLite store with its artifacts next to it; no Ray."""

from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import FAKE_SECRET
from tests.helpers import png_bytes, tiny_config

NAME = "lare-tiny-test"
IMAGES = [png_bytes(64, 48, seed=1), png_bytes(100, 80, seed=2)]
QUESTIONS = ["What colour is the star?", "Which shape is larger?"]
CHOICES = [None, ["the square", "the circle"]]  # a row without options, a row with them


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Two training runs' ends (publish) registering as NAME: versions 1 and 2."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from lare.model import LaReModel
    from lare.tracking import RunLogger, experiment_id
    from lare.train.export import publish
    from lare.train.plan import RunPlan

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    # A credential in the config: the logged model must carry it redacted.
    cfg = tiny_config("tiny-qwen3-vl", "lare", f"tracking.uri={uri}", f"tracking.register_as={NAME}",
                      f"data.traces_dir=s3://lare-fake-key-id:{FAKE_SECRET}@bucket/traces")
    model = LaReModel.build(cfg).eval()
    client = MlflowClient(uri)
    exp = experiment_id(client, uri, "mlflow-model-test")  # artifacts in mlartifacts/ next to the database
    runs = []
    for i in range(2):
        run_id = client.create_run(exp).info.run_id
        logger = RunLogger(uri, run_id, system_metrics=False)
        plan = RunPlan(cfg, steps_per_epoch=1, experiment_uri=str(root / "runs" / f"run{i}"), mlflow_uri=uri,
                       mlflow_run_id=run_id)
        publish(model.state_dict(), plan, logger)
        logger.close()
        runs.append(run_id)
    # mlflow.pyfunc.load_model reads the process-wide URIs; put them back for the tests after these.
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield {"uri": uri, "root": root, "model": model, "runs": runs, "cfg": cfg, "plan": plan}
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


EXACT = ("answer", "text", "tokens", "boxes")


def assert_same(rows: list[dict], answers) -> None:
    """Predictions as model.answer gives them: answer, text, tokens, boxes and each refocus step's grid and regions
    exactly; the refocus weights to float rounding (a model loaded from the export and the one in memory agreed
    bit for bit on the two-row batches here, not on a batch of one, where the kernels may sum in another order)."""
    import torch

    assert len(rows) == len(answers)
    for row, want in zip(rows, answers):
        want = want.to_dict()
        assert row["latency_s"] > 0
        assert {k: row[k] for k in EXACT} == {k: want[k] for k in EXACT}
        steps = [[(s["step"], list(s["grid"]), s["regions"]) for s in a["refocus"]] for a in (row, want)]
        assert steps[0] == steps[1]
        if want["refocus"]:
            got = torch.tensor([s["weights"] for s in row["refocus"]])
            assert torch.allclose(got, torch.tensor([s["weights"] for s in want["refocus"]]), rtol=0, atol=1e-6)


def test_registered_model_answers_as_the_model_does(published, tmp_path):
    import mlflow

    model = published["model"]
    want = model.answer(IMAGES, QUESTIONS, [c or [] for c in CHOICES])
    assert all(len(w.refocus) == model.cfg.method.latent_steps for w in want)  # the maps are compared too
    frame = pd.DataFrame({"image": IMAGES, "question": QUESTIONS, "choices": CHOICES})
    for source in (f"models:/{NAME}/1", f"runs:/{published['runs'][0]}/model"):
        loaded = mlflow.pyfunc.load_model(source)
        assert_same(loaded.predict(frame), want)

    # Images as paths, without a choices column.
    paths = []
    for i, data in enumerate(IMAGES):
        paths.append(str(tmp_path / f"{i}.png"))
        (tmp_path / f"{i}.png").write_bytes(data)
    rows = loaded.predict(pd.DataFrame({"image": paths, "question": QUESTIONS}))
    assert_same(rows, model.answer(paths, QUESTIONS))

    # Params reach model.answer; an unreadable image is the request's error, naming the row.
    short = loaded.predict(frame, params={"max_new_tokens": 1, "return_refocus": False})
    assert all(r["refocus"] == [] and r["tokens"]["generated"] <= 2 for r in short)  # lare also pays <|lare_end|>
    with pytest.raises(mlflow.exceptions.MlflowException, match="image 1: not a readable image"):
        loaded.predict(pd.DataFrame({"image": [IMAGES[0], b"not a png"], "question": QUESTIONS}))


def test_logged_model_has_signature_input_example_and_no_pickle(published):
    import mlflow
    from mlflow.models import Model

    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}/2")
    info = Model.load(local)
    inputs = {c.name: c for c in info.signature.inputs.inputs}
    assert list(inputs) == ["image", "question", "choices"] and not inputs["choices"].required
    assert {c.name for c in info.signature.outputs.inputs} == {*EXACT, "latency_s", "refocus"}
    assert {p.name for p in info.signature.params.params} == {"max_new_tokens", "return_refocus"}
    example = info.load_input_example(local)
    assert list(example.columns) == ["image", "question", "choices"] and isinstance(example["image"][0], bytes)
    assert len(mlflow.pyfunc.load_model(local).predict(example)) == 1

    files = {str(p.relative_to(local)) for p in Path(local).rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pt", ".bin"))], files  # weights stay safetensors
    assert {"artifacts/lare_export/model.safetensors", "artifacts/lare_export/lare_heads.safetensors",
            "artifacts/lare_export/chat_template.jinja", "input_example.json", "requirements.txt"} <= files
    assert not [f for f in files if FAKE_SECRET.encode() in (Path(local) / f).read_bytes()]  # lare_config.json redacted


def test_a_version_per_run_and_a_run_registers_once(published):
    from mlflow.tracking import MlflowClient

    from lare.tracking import RunLogger
    from lare.train.export import publish

    client = MlflowClient(published["uri"])
    versions = {int(v.version): v.run_id for v in client.search_model_versions(f"name = '{NAME}'")}
    assert versions == {1: published["runs"][0], 2: published["runs"][1]}
    # The second run's end runs again (a restart after publishing): no third version.
    logger = RunLogger(published["uri"], published["runs"][1], system_metrics=False)
    publish(published["model"].state_dict(), published["plan"], logger)
    assert logger.register(NAME) == f"models:/{NAME}/2"
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 2


def test_evaluation_finds_the_export_inside_the_mlflow_model(published, tmp_path):
    import mlflow

    from lare.eval.inference import fetch_model, read_model_config

    uri, run = published["uri"], published["runs"][0]
    for spec in (f"runs:/{run}/model", f"runs:/{run}", f"models:/{NAME}/2"):
        assert read_model_config(spec, uri)["method"]["paradigm"] == "lare", spec
        folder = fetch_model(spec, tmp_path / spec.replace("/", "_").replace(":", ""), uri)
        assert folder.name == "lare_export" and (folder / "lare_config.json").is_file(), spec
    # A downloaded MLflow model, as a local folder.
    local = mlflow.artifacts.download_artifacts(f"runs:/{run}/model", dst_path=str(tmp_path / "local"))
    assert read_model_config(local)["tracking"]["register_as"] == NAME
    assert fetch_model(local, tmp_path) == Path(local) / "artifacts" / "lare_export"


def test_a_rest_request_carries_the_image_as_base64(published):
    """What `mlflow models serve` answers (its scoring app, in process): the saved serving example, whose image is
    base64 text in JSON, decoded per the signature, answers as model.answer does on the image's bytes."""
    import mlflow
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    from lare.mlflow_model import input_example

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1"))
    app = scoring_server.init(mlflow.pyfunc.load_model(str(local)))
    response = TestClient(app).post("/invocations", content=(local / "serving_input_example.json").read_text(),
                                    headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    example = input_example()
    want = published["model"].answer(list(example["image"]), list(example["question"]), list(example["choices"]))
    assert_same(response.json()["predictions"], want)


def test_the_server_loads_the_registered_model(published):
    """What each serving replica does with --model models:/NAME/VERSION (lare.serve.app.load_model)."""
    from lare.serve.app import load_model
    from tests.helpers import png_bytes

    served = load_model(f"models:/{NAME}/1", published["uri"])
    image = png_bytes(64, 48, seed=3)
    got = served.answer([image], ["Which shape is red?"], max_new_tokens=6)[0]
    want = published["model"].answer([image], ["Which shape is red?"], max_new_tokens=6)[0]
    assert (got.answer, got.tokens) == (want.answer, want.tokens)
