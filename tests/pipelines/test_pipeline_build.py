"""The job as a whole: reproducibility, output layout and manifest, reject threshold, CLI, and reading back."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from pipelines.build import RejectFractionExceeded, build_traces
from pipelines.io import read_manifest, read_traces, read_traces_table
from pipelines.schema import SCHEMA_VERSION, TRACE_SCHEMA
from pipelines.sources import refocus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = {"num_train": 60, "num_val": 12, "num_test": 12, "num_hard": 16}


@pytest.fixture(scope="module")
def two_builds(ray_session, tmp_path_factory):
    a, b = str(tmp_path_factory.mktemp("a") / "out"), str(tmp_path_factory.mktemp("b") / "out")
    ma = build_traces("refocus", a, seed=1, options=dict(SMALL, batch_size=8))
    mb = build_traces("refocus", b, seed=1, options=dict(SMALL, batch_size=5))  # other batching, same rows
    return a, ma, b, mb


def test_two_runs_same_content_hash_and_rows(two_builds):
    a, ma, b, mb = two_builds
    assert ma["content_hash"] == mb["content_hash"]
    ta, tb = read_traces_table(a, "train").sort_by("id"), read_traces_table(b, "train").sort_by("id")
    assert ta.equals(tb)


def test_layout_manifest_and_schema(two_builds):
    a, ma, _, _ = two_builds
    assert sorted(os.listdir(a)) == ["hard", "manifest.json", "test", "train", "val"]  # no rejects: no folder
    m = read_manifest(a)
    assert m == json.loads(json.dumps(ma))
    assert m["counts"]["splits"] == {"hard": 16, "test": 12, "train": 60, "val": 12}
    assert m["counts"]["rows_in"] == 100 and m["counts"]["rejects"] == 0
    assert m["schema_version"] == SCHEMA_VERSION and m["source"] == "refocus" and m["seed"] == 1
    assert m["options"]["num_train"] == 60 and len(m["content_hash"]) == 64
    for split in ("train", "hard"):
        files = sorted(os.listdir(os.path.join(a, split)))
        assert all(f.startswith("part-") and f.endswith(".parquet") for f in files)
        schema = pq.read_schema(os.path.join(a, split, files[0]))
        assert schema.equals(TRACE_SCHEMA, check_metadata=False) and schema.metadata[b"lare.schema_version"] == b"1"
    hard = read_traces_table(a, "hard").to_pylist()
    assert all(json.loads(r["meta"])["hard"] for r in hard)


def test_rows_do_not_depend_on_parallelism(two_builds):
    a, _, _, _ = two_builds
    rows = {r["meta"]: r for r in read_traces_table(a, "val").to_pylist()}
    for i in (0, 5, 11):
        draft = refocus.generate("val", i, seed=1)
        row = next(r for r in rows.values() if json.loads(r["meta"])["index"] == i)
        assert (row["question"], row["answer"], row["choices"]) == (draft["question"], draft["answer"], draft["choices"])


def test_other_seed_other_hash_and_rebuild_replaces(ray_session, two_builds, tmp_path):
    a, ma, _, _ = two_builds
    out = str(tmp_path / "out")
    m2 = build_traces("refocus", out, seed=2, options=SMALL)
    assert m2["content_hash"] != ma["content_hash"]
    m3 = build_traces("refocus", out, seed=1, options=SMALL)  # same folder again: replaced, not appended
    assert m3["content_hash"] == ma["content_hash"] and read_traces_table(out, "train").num_rows == 60


def test_refuses_to_overwrite_foreign_folder(ray_session, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        build_traces("refocus", str(tmp_path), options=SMALL)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_unknown_option_is_named(ray_session, tmp_path):
    with pytest.raises(ValueError, match="num_trian"):
        build_traces("refocus", str(tmp_path / "o"), options={"num_trian": 5})


def test_max_reject_fraction_fails_loudly_after_writing(ray_session, fixtures_dir, tmp_path):
    out = str(tmp_path / "vc")
    opts = {"path": f"{fixtures_dir}/visual_cot/viscot_363k.json", "image_root": f"{fixtures_dir}/visual_cot/images"}
    with pytest.raises(RejectFractionExceeded, match="10 of 13 records rejected"):
        build_traces("visual_cot", out, options=opts, max_reject_fraction=0.5)
    m = read_manifest(out)
    assert m["status"] == "failed_reject_fraction" and m["counts"]["rejects"] == 10
    assert len(os.listdir(os.path.join(out, "rejects"))) >= 1


def test_read_traces_as_ray_dataset(two_builds):
    a, _, _, _ = two_builds
    ds = read_traces(a, "test")
    assert ds.count() == 12
    assert set(ds.schema().names) == set(TRACE_SCHEMA.names)


def test_cli_runs_end_to_end_and_exits_nonzero_past_the_threshold(tmp_path, fixtures_dir):
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", OMP_NUM_THREADS="1")
    env.pop("RAY_ADDRESS", None)
    out = str(tmp_path / "cli")
    help_text = subprocess.run([sys.executable, "jobs/build_data.py", "--help"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert help_text.returncode == 0
    for word in ("--max-reject-fraction", "num_train", "image_root", "max_side", "bbox_format", "viscot"):
        assert word in help_text.stdout
    cmd = [sys.executable, os.path.join(ROOT, "jobs", "build_data.py"), "--source", "visual_cot", "--out", out, "--num-cpus", "2",
           "--no-progress", "--option", f"path={fixtures_dir}/visual_cot/viscot_363k.json",
           "--option", f"image_root={fixtures_dir}/visual_cot/images"]
    env.pop("PYTHONPATH", None)  # run from elsewhere, not installed: Ray workers must still find `pipelines`
    ok = subprocess.run(cmd + ["--max-reject-fraction", "0.8"], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "rows in 13  rows out 3  rejects 10" in ok.stdout and "decompression_bomb 1" in ok.stdout
    bad = subprocess.run(cmd + ["--max-reject-fraction", "0.2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "FAILED" in bad.stderr and "max_reject_fraction" in bad.stderr
