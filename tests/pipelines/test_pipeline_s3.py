"""Write a build to S3 and read it back, through a real S3 endpoint (moto_server on 127.0.0.1)."""

import json
import os

import boto3
import pyarrow.fs as pafs
import pytest

from pipelines.build import build_traces
from pipelines.io import read_manifest, read_traces, read_traces_table

SMALL = {"num_train": 24, "num_val": 8, "num_test": 0, "num_hard": 0}


@pytest.fixture(scope="module")
def bucket(moto_s3):
    s3 = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
    s3.create_bucket(Bucket="lare-test")
    return s3


def test_build_to_s3_and_read_back(ray_session, moto_s3, bucket, tmp_path, monkeypatch, capsys):
    fs = pafs.S3FileSystem(endpoint_override=moto_s3.removeprefix("http://"), scheme="http", region="us-east-1")
    manifest = build_traces("refocus", "s3://lare-test/traces/refocus", seed=0, options=SMALL, filesystem=fs)
    keys = [o["Key"] for o in bucket.list_objects_v2(Bucket="lare-test", Prefix="traces/refocus/")["Contents"]]
    assert "traces/refocus/manifest.json" in keys
    assert any(k.startswith("traces/refocus/train/part-") for k in keys) and any(k.startswith("traces/refocus/val/") for k in keys)

    # read back with the filesystem given, and with the endpoint taken from the environment
    assert read_traces_table("s3://lare-test/traces/refocus", "train", filesystem=fs).num_rows == 24
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3)
    assert read_manifest("s3://lare-test/traces/refocus")["content_hash"] == manifest["content_hash"]
    assert read_traces("s3://lare-test/traces/refocus", "val").count() == 8

    # the same build locally has the same content hash: storage does not change content
    local = build_traces("refocus", str(tmp_path / "local"), seed=0, options=SMALL)
    assert local["content_hash"] == manifest["content_hash"]

    # credentials never reach the manifest (local or on S3) or what the job printed
    printed, secret = capsys.readouterr(), os.environ["AWS_SECRET_ACCESS_KEY"]
    for text in (json.dumps(manifest), json.dumps(read_manifest("s3://lare-test/traces/refocus")), printed.out, printed.err):
        assert secret not in text and os.environ["AWS_ACCESS_KEY_ID"] not in text
