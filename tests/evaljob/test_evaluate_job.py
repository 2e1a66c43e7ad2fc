"""jobs/evaluate.py end to end on CPU: tiny models (random weights), small benchmark files in the real formats,
Ray Data batch inference with one actor, MLflow (SQLite and a real server), and the clear errors."""

import csv
import io
import json

import pytest
from PIL import Image

import lare.jobs.evaluate as eval_job
from lare.config import load_config
from lare.eval.readers import EvalItem
from lare.eval.scoring import PROTOCOLS
from lare.model import LaReModel
from tests.helpers import png_bytes
from tests.eval.benchfiles import mmbench_rows, pope_rows, write_refocus, write_tsv

BENCHES = ["refocus", "pope", "mmbench"]
PRIMARY = {"refocus": "acc", "pope": "f1", "mmbench": "circular_acc"}
LATENT_STEPS = 2
MAX_NEW = 6


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A lare model with the pixel decoder, a direct and a crop baseline, saved as exports."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, extra in {"lare": [f"method.latent_steps={LATENT_STEPS}", "method.pixel_decoder=true"],
                        "direct": [], "crop": []}.items():
        cfg = load_config(None, ["model.backbone=tiny-qwen2.5-vl", f"method.paradigm={name}", *extra])
        LaReModel.build(cfg).save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    write_refocus(root)
    write_tsv(root / "POPE.tsv", pope_rows())
    write_tsv(root / "MMBench_DEV_EN.tsv", mmbench_rows())
    return root


def expected_account(processor, item: dict, latent: bool) -> dict:
    """visual and prompt_text recomputed from the processor, independently of generation."""
    image = Image.open(io.BytesIO(item["image"])).convert("RGB")
    n_vis = processor.num_visual_tokens(processor.images([image])[1])[0]
    prompt = processor.prompt_ids(item["question"], item["choices"], n_vis)
    return {"visual": n_vis, "prompt_text": len(prompt) - n_vis + (1 if latent else 0)}  # + <|lare_start|>


@pytest.mark.slow
def test_job_with_ray_data_compares_paradigms_and_ablations(tmp_path, models, data_root, ray_session, mlflow_server):
    from mlflow.tracking import MlflowClient

    from lare.eval import read_benchmark
    from lare.eval.run import load_items

    out = tmp_path / "out"
    uri = mlflow_server
    summary = eval_job.main([
        "--model", f"{models['lare']},{models['direct']}", "--benchmarks", ",".join(BENCHES),
        "--data-root", str(data_root), "--limit", "2", "--batch-size", "4", "--concurrency", "1",
        "--ablation", "none", "--ablation", "zero_latents", "--heatmaps", "3", "--max-new-tokens", str(MAX_NEW),
        "--out", str(out), "--tracking-uri", uri])

    # results.json: one row per model x ablation x benchmark; zero_latents does not apply to direct.
    doc = json.loads((out / "results.json").read_text())
    rows = doc["results"]
    keys = {(r["model"], r["ablation"], r["benchmark"]) for r in rows}
    assert keys == {(m, a, b) for b in BENCHES for m, a in [("lare", "none"), ("lare", "zero_latents"), ("direct", "none")]}
    assert len(rows) == len(keys)
    items = load_items(BENCHES, data_root, limit=2)
    for r in rows:
        assert r["protocol"] == PROTOCOLS[r["benchmark"]] == r["metrics"]["protocol"]
        assert r["primary"] == PRIMARY[r["benchmark"]] and r["accuracy"] == r["metrics"][r["primary"]]
        assert r["n"] == len(items[r["benchmark"]]) and r["missing"] == 0  # every item answered
    assert doc["protocols"] == {b: PROTOCOLS[b] for b in BENCHES}
    assert "direct: zero_latents" in doc["settings"]["skipped_ablations"]
    # MMBench: the released file's circular copies are all asked (2 groups: 4 + 2 options).
    assert len(items["mmbench"]) == 6

    # predictions.jsonl: every item x (model, ablation); token accounts as lare.model.generate defines them.
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == sum(len(v) for v in items.values()) * 3
    by_id = {(it.benchmark, it.id): it for v in items.values() for it in v}
    processors = {m: LaReModel.from_pretrained(models[m]).processor for m in ("lare", "direct")}
    for p in preds:
        t = p["tokens"]
        assert t["total"] == t["visual"] + t["prompt_text"] + t["latent"] + t["generated"] + t["crop_visual"]
        lare = p["paradigm"] == "lare"
        assert t["latent"] == (LATENT_STEPS if lare else 0) and t["crop_visual"] == 0
        assert 1 <= t["generated"] <= MAX_NEW + (1 if lare else 0)  # lare also pays the forced <|lare_end|>
        it = by_id[(p["benchmark"], p["id"])]
        rec = {"image": it.image, "question": it.question, "choices": it.choices}
        assert {k: t[k] for k in ("visual", "prompt_text")} == expected_account(processors[p["model"]], rec, lare), p["id"]
        assert p["gold"] == it.answer and isinstance(p["prediction"], str) and p["latency_s"] > 0
    # The table's means are the means of the per-item accounts.
    for r in rows:
        mine = [p["tokens"] for p in preds if (p["model"], p["ablation"], p["benchmark"]) ==
                (r["model"], r["ablation"], r["benchmark"])]
        for k in ("visual", "prompt_text", "latent", "generated", "total"):
            assert r["tokens"][k] == pytest.approx(sum(t[k] for t in mine) / len(mine))
        assert r["tokens"]["inference"] == pytest.approx(r["tokens"]["latent"] + r["tokens"]["generated"])
        assert r["latency_s"] > 0

    # CSV and Markdown carry the same rows.
    table = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert len(table) == len(rows) and {t["protocol"] for t in table} == {PROTOCOLS[b] for b in BENCHES}
    assert {float(t["tokens_latent"]) for t in table if t["model"] == "lare"} == {float(LATENT_STEPS)}
    md = (out / "results.md").read_text()
    assert md.count("| pope | lare | lare | zero_latents | f1 |") == 1 and "## Scoring protocols" in md

    # Plots: accuracy vs tokens, and heatmaps with decoded regions for the lare model only (3 samples x 2 ablations).
    assert Image.open(out / "accuracy_vs_tokens.png").size[0] > 300
    heat = doc["heatmaps"]
    assert {(h["model"], h["ablation"]) for h in heat} == {("lare", "none"), ("lare", "zero_latents")}
    assert len(heat) == 6 and all(h["regions"] and h["steps"] == LATENT_STEPS for h in heat)
    assert {h["benchmark"] for h in heat} == set(BENCHES)  # round-robin over the benchmarks
    for h in heat:
        assert Image.open(out / h["file"]).format == "PNG"

    # MLflow: a new run in experiment lare-eval with the headline metrics, params and every file.
    client = MlflowClient(uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "lare-eval" and run.info.status == "FINISHED"
    pope = next(r for r in rows if (r["model"], r["ablation"], r["benchmark"]) == ("lare", "none", "pope"))
    assert run.data.metrics["eval/lare/none/pope/accuracy"] == pytest.approx(pope["accuracy"])
    assert run.data.metrics["eval/lare/none/pope/tokens_latent"] == LATENT_STEPS
    assert "eval/direct/none/mmbench/score/by_l2-category/Fine-grained Perception _instance-level_/acc" in run.data.metrics
    assert run.data.params["model/direct/paradigm"] == "direct" and run.data.params["ablations"] == "none,zero_latents"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "results.csv", "results.md", "predictions.jsonl", "accuracy_vs_tokens.png",
            "heatmaps"} <= artifacts
    assert len(client.list_artifacts(run.info.run_id, "heatmaps")) == 6
    assert read_benchmark("pope", data_root, limit=2)  # the files were only read, never changed


def test_ablations_reach_the_model_and_generation_returns_its_latents(models, data_root):
    """In process: the predictor applies each ablation (uniform_refocus gives flat maps), and generation hands
    back the latents it fed the model (which the pixel decoder renders)."""
    import torch

    from lare.batch import build_batch, example_from_record
    from lare.eval.inference import ModelPredictor, inference_records
    from lare.eval.run import EvalError, evaluate_model

    model = LaReModel.from_pretrained(models["lare"]).eval()
    # Noise images of different sizes: a flat image would make any attention uniform.
    items = [EvalItem("refocus", f"noise{i}", "What colour is the star?", ["red", "blue"][: i % 2 * 2], "red",
                      png_bytes(w, h, seed=i), {"split": "test", "family": "attribute"})
             for i, (w, h) in enumerate([(224, 224), (150, 100), (90, 200)])]
    examples = [example_from_record(it.to_record(), model.cfg.data.max_steps) for it in items]
    batch = build_batch(examples, model.processor, model.cfg, prompt_only=True)
    for ablation in ("none", "shuffle_refocus"):
        gen = model(batch, mode="generate", ablation=ablation, max_new_tokens=2)
        assert [tuple(z.shape) for z in gen.latents] == [(LATENT_STEPS, model.text_config.hidden_size)] * len(items)
        assert all(r.shape[0] == LATENT_STEPS for r in gen.refocus)

    keys = [(it.benchmark, it.id) for it in items]
    predictor = ModelPredictor(model=model, ablations=["none", "uniform_refocus"], max_new_tokens=2, heatmap_keys=keys)
    recs = inference_records(items)
    out = predictor({k: [r[k] for r in recs] for k in recs[0]})
    assert out["ablation"] == ["none"] * len(items) + ["uniform_refocus"] * len(items)
    for abl, maps, regions in zip(out["ablation"], out["refocus"], out["regions"]):
        maps = torch.tensor(json.loads(maps))
        assert maps.shape[0] == LATENT_STEPS and torch.allclose(maps.sum((1, 2)), torch.ones(LATENT_STEPS))
        spread = float((maps - 1 / maps[0].numel()).abs().max())
        assert (spread < 1e-6) == (abl == "uniform_refocus"), spread  # random heads are not uniform; the ablation is
        strip = Image.open(io.BytesIO(regions))
        size = model.cfg.method.pixel_size
        assert strip.size == (LATENT_STEPS * size, size)

    # The Python API (what the paradigm benchmark and Tune call): in memory, no files, no MLflow; a model
    # lent in training mode goes back in training mode.
    model.train()
    res = evaluate_model(model, ["refocus", "pope"], data_root, limit=1, batch_size=4,
                         ablation=["none", "zero_latents"], max_new_tokens=2)
    assert res["paradigm"] == "lare" and len(res["results"]) == 4
    assert {(r["benchmark"], r["ablation"]) for r in res["results"]} == {
        (b, a) for b in ("refocus", "pope") for a in ("none", "zero_latents")}
    assert all(r["tokens"]["latent"] == LATENT_STEPS for r in res["results"]) and model.training
    with pytest.raises(EvalError, match="do not apply to a 'direct' model"):
        evaluate_model(models["direct"], ["pope"], data_root, ablation="zero_latents")


@pytest.mark.slow
def test_runs_and_models_uris_against_a_tracking_server(tmp_path, models, data_root, mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    exp = client.create_experiment("train-lare")
    train_run = client.create_run(exp, run_name="trained").info.run_id
    client.log_artifacts(train_run, str(models["lare"]), "model")
    client.set_terminated(train_run)

    common = ["--benchmarks", "pope", "--data-root", str(data_root), "--limit", "1", "--no-ray",
              "--max-new-tokens", "2", "--heatmaps", "1", "--tracking-uri", mlflow_server]
    first = eval_job.main(["--model", f"runs:/{train_run}/model", "--out", str(tmp_path / "a"), *common])
    run = client.get_run(first["mlflow_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == train_run  # nested under the training run
    assert run.info.experiment_id == exp and run.info.status == "FINISHED"
    assert "eval/none/pope/accuracy" in run.data.metrics and run.data.metrics["eval/none/pope/tokens_latent"] == LATENT_STEPS
    assert run.data.params["model/lare/source"] == f"runs:/{train_run}/model"
    assert {"results.json", "heatmaps"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    # A registered model version, logged into an existing run (the training run itself).
    client.create_registered_model("lare-tiny")
    version = client.create_model_version("lare-tiny", f"runs:/{train_run}/model", run_id=train_run).version
    second = eval_job.main(["--model", f"models:/lare-tiny/{version}", "--mlflow-run-id", train_run,
                            "--out", str(tmp_path / "b"), *common])
    assert second["mlflow_run_id"] == train_run
    trained = client.get_run(train_run)
    assert trained.data.metrics["eval/none/pope/accuracy"] == pytest.approx(second["results"][0]["accuracy"])
    assert trained.info.status == "FINISHED"  # the evaluation neither reopened nor closed it
    logged = {a.path for a in client.list_artifacts(train_run, "evaluation/b")}
    assert {"evaluation/b/results.json", "evaluation/b/results.md"} <= logged


@pytest.mark.slow
def test_s3_model_directory(tmp_path, models, data_root, moto_s3):
    import boto3

    from lare.storage import upload_dir

    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket="lare-models")
    upload_dir(models["direct"], "s3://lare-models/exports/direct")
    summary = eval_job.main(["--model", "s3://lare-models/exports/direct", "--benchmarks", "pope",
                             "--data-root", str(data_root), "--limit", "1", "--no-ray", "--no-tracking",
                             "--max-new-tokens", "2", "--out", str(tmp_path / "out")])
    assert [(r["model"], r["benchmark"]) for r in summary["results"]] == [("direct", "pope")]
    assert summary["mlflow_run_id"] is None and not (tmp_path / "mlflow.db").exists()


def test_clear_errors(tmp_path, models, data_root, capsys):
    base = ["--data-root", str(data_root), "--no-ray", "--no-tracking", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=f"model directory {tmp_path / 'nope'} does not exist"):
        eval_job.main(["--model", str(tmp_path / "nope"), "--benchmarks", "pope", *base])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="is not a LaRe export directory .no lare_config.json"):
        eval_job.main(["--model", str(tmp_path / "empty"), "--benchmarks", "pope", *base])
    with pytest.raises(SystemExit, match=r"mmstar: no benchmark file under .*MMStar\.tsv"):
        eval_job.main(["--model", str(models["lare"]), "--benchmarks", "pope,mmstar", *base])
    with pytest.raises(SystemExit, match="--paradigm crop matches none of the models: .* is lare"):
        eval_job.main(["--model", str(models["lare"]), "--benchmarks", "pope", "--paradigm", "crop", *base])
    for bad, message in ((["--ablation", "zero_latent"], "--ablation zero_latent: must be one of"),
                         (["--benchmarks", "pop"], "unknown benchmark 'pop'")):
        with pytest.raises(SystemExit) as e:
            eval_job.main(["--model", str(models["lare"]), *base, *bad])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.json").exists()


def test_skip_missing_and_paradigm_filter(tmp_path, models, data_root):
    summary = eval_job.main(["--model", f"{models['lare']},{models['direct']},{models['crop']}",
                             "--paradigm", "direct,crop", "--benchmarks", "pope,mmstar", "--skip-missing",
                             "--data-root", str(data_root), "--limit", "1", "--no-ray", "--no-tracking",
                             "--max-new-tokens", "4", "--out", str(tmp_path / "out")])
    assert [(r["model"], r["benchmark"]) for r in summary["results"]] == [("direct", "pope"), ("crop", "pope")]
    preds = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    for p in preds:  # a crop model's account: what each re-encoded box appended is crop_visual
        assert p["tokens"]["latent"] == 0 and isinstance(p["crop_boxes"], list)
        assert (p["tokens"]["crop_visual"] > 0) == bool(p["crop_boxes"])
        assert p["tokens"]["total"] == sum(v for k, v in p["tokens"].items() if k != "total")


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        eval_job.main(["--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0
    for flag in ("--model", "--benchmarks", "--data-root", "--paradigm", "--limit", "--batch-size", "--concurrency",
                 "--num-gpus-per-actor", "--ablation", "--out", "--mlflow-run-id", "--tracking-uri", "--heatmaps",
                 "--max-new-tokens", "--no-ray", "--no-tracking"):
        assert flag in text
    assert "never changes the paradigm" in text


def test_other_image_answers_each_question_about_the_next_rows_image(models):
    """The input ablation every paradigm gets: row i is answered with row i+1's image (here told apart by its
    visual token count, the images having different sizes); a lone row gets a blank image of its own size."""
    from lare.eval.inference import ModelPredictor, applicable, inference_records
    from lare.model.modeling import PARADIGMS

    assert all(applicable("other_image", p) for p in PARADIGMS)
    model = LaReModel.from_pretrained(models["direct"]).eval()
    sizes = [(224, 224), (150, 100), (90, 200)]
    items = [EvalItem("refocus", f"img{i}", "What colour is the star?", [], "red", png_bytes(w, h, seed=i),
                      {"split": "test", "family": "attribute"}) for i, (w, h) in enumerate(sizes)]
    predictor = ModelPredictor(model=model, ablations=["none", "other_image"], max_new_tokens=2)
    recs = inference_records(items)
    out = predictor({k: [r[k] for r in recs] for k in recs[0]})
    visual = dict(zip(zip(out["ablation"], out["id"]), out["tok_visual"]))
    own = [visual[("none", f"img{i}")] for i in range(3)]
    assert len(set(own)) == 3
    assert [visual[("other_image", f"img{i}")] for i in range(3)] == own[1:] + own[:1]
    lone = predictor({k: [recs[1][k]] for k in recs[1]})
    assert lone["tok_visual"] == [own[1], own[1]] and lone["ablation"] == ["none", "other_image"]
