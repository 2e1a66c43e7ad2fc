"""The jobs' command-line contract (lare/cli.py): a user error is one `error: ...` line on stderr naming the bad
thing, exit status 2 and no traceback (the traceback only with --debug or LARE_DEBUG=1); a build that rejects
everything, or too much, exits 1 with the top reject reasons and the setting to change; a mistyped
data.traces_dir is refused instead of being built.

Each job runs as a subprocess, the way a user runs it. The user errors are all found before Ray starts, so those
runs take seconds; only the reject test starts a (one-CPU) Ray."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from lare.cli import UserError, UserExit, main_guard
from lare.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def job(name: str, *args, env_extra=None, timeout=120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_DATA_DISABLE_PROGRESS_BARS="1")
    env.pop("RAY_ADDRESS", None)  # never attach to somebody else's cluster
    env.pop("LARE_DEBUG", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(ROOT / "jobs" / name), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


def assert_user_error(out: subprocess.CompletedProcess, *names: str) -> str:
    """Exit 2, no traceback, and the last stderr line is the one error line, naming each of `names`."""
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    message = lines[-1]
    assert "error: " in message, out.stderr[-3000:]
    assert sum("error: " in line for line in lines) == 1, out.stderr[-3000:]
    for name in names:
        assert name in message, (name, message)
    return message


# ---------------------------------------------------------------------------------------------
# lare/cli.py itself


def _raises(error):
    def main(argv=None):
        raise error
    return main


@pytest.mark.parametrize("error", [UserError("bad path x"), ConfigError("config: unknown key 'x'"),
                                   SystemExit("error: no traces at x")])
def test_guard_turns_user_errors_into_exit_2(error, capsys, monkeypatch):
    monkeypatch.delenv("LARE_DEBUG", raising=False)
    with pytest.raises(UserExit) as e:
        main_guard(_raises(error))([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "Traceback" not in err and str(e.value) in err


def test_guard_leaves_bugs_and_plain_exits_alone(monkeypatch):
    monkeypatch.delenv("LARE_DEBUG", raising=False)
    for bug in (KeyError("x"), ValueError("x"), FileNotFoundError("x"), TypeError("x")):
        with pytest.raises(type(bug)):
            main_guard(_raises(bug))([])
    for code in (0, 1, 2):  # --help, a failed dry run, argparse's own errors: their status is kept
        with pytest.raises(SystemExit) as e:
            main_guard(_raises(SystemExit(code)))([])
        assert e.value.code == code and not isinstance(e.value, UserExit)


def test_guard_debug_prints_the_traceback(capsys, monkeypatch):
    monkeypatch.delenv("LARE_DEBUG", raising=False)
    with pytest.raises(UserExit):
        main_guard(_raises(UserError("bad")))(["--debug"])
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("LARE_DEBUG", "1")
    with pytest.raises(UserExit):
        main_guard(_raises(UserError("bad")))([])
    assert "Traceback" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# jobs/train.py


@pytest.mark.parametrize("args, names", [
    (["method.recon_wieght=1"], ["method.recon_wieght", "did you mean 'method.recon_weight'"]),
    (["--config", "does/not/exist.yaml"], ["file not found: does/not/exist.yaml"]),
    (["method.latent_steps=abc"], ["method.latent_steps", "expects an integer"]),
    (["latent_steps"], ["latent_steps", "section.key=value"]),
    (["--resume-from", "/nonexistent/ckpt"], ["--resume-from /nonexistent/ckpt"]),
    (["--bogus-flag"], ["unrecognized arguments: --bogus-flag"]),
])
def test_train_user_errors(args, names):
    assert_user_error(job("train.py", *args), *names)


def test_train_unreachable_tracking_server(free_port, tmp_path):
    out = job("train.py", f"tracking.uri=http://127.0.0.1:{free_port}", "tracking.timeout_s=1",
              f"train.storage_path={tmp_path / 'runs'}")
    assert_user_error(out, f"http://127.0.0.1:{free_port}", "did not answer within 1s")


def test_train_mistyped_traces_dir_is_refused_with_the_build_command(tmp_path):
    typo = tmp_path / "data" / "traces" / "refocuss"
    assert_user_error(job("train.py", f"data.traces_dir={typo}", "train.seed=3"),
                      f"data.traces_dir {typo} does not exist",
                      f"lare-build-data --source refocus --out {typo} --seed 3", "--build-data")
    assert not typo.exists()  # nothing was built
    debug = job("train.py", "--debug", f"data.traces_dir={typo}")
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "UserError" in debug.stderr
    other = job("train.py", f"data.traces_dir={typo}", "data.source=visual_cot")  # the job never builds those
    assert "--build-data" not in assert_user_error(other, f"--source visual_cot --out {typo}")


def _check_traces(tmp_path, config_text, *overrides, build_data=False):
    import lare.jobs.train as train_job

    path = None
    if config_text is not None:
        path = tmp_path / "c.yaml"
        path.write_text(config_text)
    cfg = load_config(path, list(overrides)).with_absolute_paths()
    train_job.check_traces(cfg, str(path) if path else None, build_data)
    return cfg


def test_train_builds_only_the_default_or_the_config_files_refocus_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default data/traces/refocus resolves here: nothing exists yet
    _check_traces(tmp_path, None)  # the default data.traces_dir: built by the job
    _check_traces(tmp_path, None, "data.traces_dir=data/traces/refocus")  # the same folder, spelled out
    demo = "data:\n  source: refocus\n  traces_dir: data/traces/demo\n  source_options: {colour_only: true}\n"
    _check_traces(tmp_path, demo)  # the config file says how to build its own folder
    with pytest.raises(UserError, match="data/traces/dem0 does not exist.* colour_only=true"):
        _check_traces(tmp_path, demo, "data.traces_dir=data/traces/dem0")  # a typo in the override
    plain = "data:\n  source: refocus\n  traces_dir: data/traces/mine\n"  # no source_options: not a recipe
    with pytest.raises(UserError, match="data/traces/mine does not exist"):
        _check_traces(tmp_path, plain)
    _check_traces(tmp_path, plain, build_data=True)  # --build-data: the user asked for it
    (tmp_path / "built").mkdir()
    (tmp_path / "built" / "manifest.json").write_text("{}")
    _check_traces(tmp_path, None, "data.traces_dir=built", "data.source=visual_cot")  # a build is there


# ---------------------------------------------------------------------------------------------
# jobs/evaluate.py


def test_evaluate_user_errors(tmp_path, free_port):
    base = ["--no-tracking", "--no-ray", "--out", tmp_path / "out"]
    assert_user_error(job("evaluate.py", "--model", tmp_path / "nope", "--data-root", tmp_path, *base),
                      f"model directory {tmp_path / 'nope'} does not exist")
    assert_user_error(job("evaluate.py", "--model", tmp_path, "--data-root", tmp_path / "bench", *base),
                      f"--data-root {tmp_path / 'bench'} does not exist")
    assert_user_error(job("evaluate.py", "--model", tmp_path, "--data-root", tmp_path, "--benchmarks", "pop", *base),
                      "unknown benchmark 'pop'")
    down = job("evaluate.py", "--model", "runs:/0123/model", "--data-root", tmp_path, "--tracking-uri",
               f"http://127.0.0.1:{free_port}", "--tracking-timeout", "1", "--no-ray", "--out", tmp_path / "out")
    assert_user_error(down, f"http://127.0.0.1:{free_port}", "did not answer within 1s")
    debug = job("evaluate.py", "--model", tmp_path / "nope", "--data-root", tmp_path, "--debug", *base)
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "ModelNotFound" in debug.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# jobs/build_data.py


def test_build_data_user_errors(tmp_path):
    out = tmp_path / "out"
    assert_user_error(job("build_data.py", "--source", "jsonl", "--out", out, f"path={tmp_path / 'none.jsonl'}"),
                      f"path={tmp_path / 'none.jsonl'}", "no such file or folder")
    assert_user_error(job("build_data.py", "--source", "refocus", "--out", out, "num_trian=5"),
                      "unknown option(s) ['num_trian']")
    assert_user_error(job("build_data.py", "--source", "refocus", "--out", out, "--option", "num_train"),
                      "'num_train' is not of the form key=value")
    assert_user_error(job("build_data.py", "--source", "refocus", "--out", out, "--config", tmp_path / "c.yaml"),
                      f"--config file not found: {tmp_path / 'c.yaml'}")
    assert_user_error(job("build_data.py", "--source", "refocus", "--out", out, "families=shapes"),
                      "'families' has unknown families ['shapes']")
    assert_user_error(job("build_data.py", "--source", "nope", "--out", out), "invalid choice: 'nope'")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "keep.txt").write_text("keep me")
    assert_user_error(job("build_data.py", "--source", "refocus", "--out", tmp_path / "precious", "num_train=4"),
                      f"output {tmp_path / 'precious'} is not empty", "refusing to overwrite")
    assert (tmp_path / "precious" / "keep.txt").read_text() == "keep me"
    debug = job("build_data.py", "--source", "refocus", "--out", out, "num_trian=5", env_extra={"LARE_DEBUG": "1"})
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "BuildInputError" in debug.stderr
    assert not out.exists()


def test_build_data_options_are_key_value_like_train():
    import lare.jobs.build_data as build_job

    args = build_job.parse_args(["--source", "jsonl", "path=a.jsonl", "--out", "o", "image_root=imgs",
                                 "--option", "columns.image_path=file", "name=007", "columns.id=qid", "limit=0"])
    assert build_job.load_options(args) == {"path": "a.jsonl", "image_root": "imgs", "name": "007", "limit": 0,
                                            "columns": {"image_path": "file", "id": "qid"}}
    args = build_job.parse_args(["--source", "refocus", "--out", "o", "num_train=5", "colour_only=true",
                                 "--option", "families=attribute,counting"])
    assert build_job.load_options(args) == {"num_train": 5, "colour_only": True, "families": "attribute,counting"}


def test_all_rejected_build_fails_with_reasons_examples_and_the_setting_to_change(tmp_path):
    """Every image is missing: exit 1 even with --max-reject-fraction 1, the manifest and rejects are written,
    and stderr names the reason, an example record and image_root."""
    (tmp_path / "imgs").mkdir()
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"q{i}", "question": "What colour is the star?", "answer": "red",
                                          "bbox": [0.1, 0.1, 0.5, 0.5], "image_path": f"img{i}.png"}) + "\n"
                              for i in range(4)))
    out = tmp_path / "out"
    run = job("build_data.py", "--source", "jsonl", "--out", out, "--option", f"path={corpus}",
              f"image_root={tmp_path / 'imgs'}", "--num-cpus", "1", "--no-progress", "--max-reject-fraction", "1",
              timeout=300)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "rows in 4  rows out 0  rejects 4" in run.stdout
    assert "FAILED: 4 of 4 records rejected" in run.stderr
    assert "image_unreadable (4), e.g. source id q0: cannot read image file" in run.stderr
    assert f"hint: no image could be read: check image_root (now '{tmp_path / 'imgs'}')" in run.stderr
    from pipelines.io import read_manifest, read_rejects_table

    manifest = read_manifest(str(out))
    assert manifest["status"] == "failed_all_rejected" and manifest["counts"]["rejects"] == 4
    top = manifest["top_rejects"][0]
    assert (top["reason"], top["count"], top["source_id"]) == ("image_unreadable", 4, "q0")
    assert read_rejects_table(str(out)).num_rows == 4  # the rejects are still written: they say what is wrong


def test_reject_summary_ranks_reasons_and_names_the_setting():
    from pipelines.build import settings_hint, top_rejects

    rejects = Counter({"bad_field": 5, "image_unreadable": 2, "corrupt_image": 2, "bbox_degenerate": 1})
    examples = {r: [i, f"id{i}", f"detail of {r}"] for i, r in enumerate(rejects)}
    top = top_rejects(rejects, examples)
    assert [(t["reason"], t["count"], t["source_id"]) for t in top] == [
        ("bad_field", 5, "id0"), ("corrupt_image", 2, "id2"), ("image_unreadable", 2, "id1")]
    opts = {"image_root": "/data/imgs", "columns": {"image": "file"}}
    base64_only = Counter({"bad_field": 3})
    assert "map your column to image_path" in settings_hint(opts, base64_only, Counter({"not valid base64": 3}))
    assert settings_hint(opts, base64_only, Counter({"not valid base64": 2})) is None  # not every reject
    assert "check image_root (now '/data/imgs')" in settings_hint(opts, Counter({"image_unreadable": 4}), Counter())
    assert settings_hint(opts, Counter({"image_unreadable": 4, "bad_field": 1}), Counter()) is None
    easy = settings_hint({"root": "/e"}, Counter({"image_unreadable": 1}), Counter())  # easy_vqa's option
    assert easy.startswith("no image could be read: check root")
    assert settings_hint(opts, Counter(), Counter()) is None


# ---------------------------------------------------------------------------------------------
# Packaged entry points: the console scripts and the jobs/ scripts are the same jobs


@pytest.mark.parametrize("script, job_file", [("lare-train", "train.py"), ("lare-build-data", "build_data.py"),
                                              ("lare-eval", "evaluate.py"), ("lare-tune", "tune.py")])
def test_console_scripts_are_the_jobs(script, job_file):
    installed = Path(sys.executable).parent / script
    assert installed.is_file(), f"{script} is not installed beside {sys.executable}: pip install -e ."
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    by_script = subprocess.run([str(installed), "--help"], capture_output=True, text=True, timeout=120, env=env)
    by_file = job(job_file, "--help")
    assert by_script.returncode == by_file.returncode == 0, (by_script.stderr[-2000:], by_file.stderr[-2000:])
    assert by_script.stdout == by_file.stdout and f"usage: {script}" in by_script.stdout
    assert "--verbose" in by_script.stdout and "--debug" in by_script.stdout
