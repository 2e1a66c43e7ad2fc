"""Where traces live: local folders or s3:// URIs through pyarrow filesystems, and reading them back.

S3 settings come from the environment, never from code or logs: AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL (e.g. http://127.0.0.1:9000 for MinIO or moto), AWS_REGION / AWS_DEFAULT_REGION,
and credentials through the AWS default chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, profiles,
instance roles). Ray workers inherit them from the Ray the job starts (lare.rayenv: never through runtime_env,
which Ray logs in clear); on a cluster they come from the cluster's own environment.
Layout of a build: OUT/<split>/part-*.parquet, OUT/rejects/part-*.parquet, OUT/manifest.json.
"""

import json

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lare.storage import resolve
from pipelines.schema import REJECT_SCHEMA, TRACE_SCHEMA


def read_traces(path_or_uri: str, split: str, filesystem: pafs.FileSystem | None = None):
    """One split of a build as a Ray Dataset (Ray must be initialised: lare.rayenv.ensure_ray)."""
    import ray.data

    fs, root = resolve(path_or_uri, filesystem)
    return ray.data.read_parquet(f"{root}/{split}", filesystem=fs, schema=TRACE_SCHEMA, file_extensions=["parquet"])


def read_traces_table(path_or_uri: str, split: str, filesystem: pafs.FileSystem | None = None) -> pa.Table:
    """One split as a pyarrow Table, without Ray: for tests, notebooks and small local sets."""
    return _read_dir(path_or_uri, split, TRACE_SCHEMA, filesystem)


def read_rejects_table(path_or_uri: str, filesystem: pafs.FileSystem | None = None) -> pa.Table:
    return _read_dir(path_or_uri, "rejects", REJECT_SCHEMA, filesystem)


def read_manifest(path_or_uri: str, filesystem: pafs.FileSystem | None = None) -> dict:
    fs, root = resolve(path_or_uri, filesystem)
    with fs.open_input_stream(f"{root}/manifest.json") as f:
        return json.loads(f.read())


def read_trace_file(path_or_uri: str, filesystem: pafs.FileSystem | None = None) -> pa.Table:
    """One trace Parquet file, read against the trace schema (a file of other columns fails here, by name)."""
    fs, path = resolve(path_or_uri, filesystem)
    return pq.read_table(path, filesystem=fs, schema=TRACE_SCHEMA)


def _read_dir(path_or_uri, folder, schema, filesystem):
    fs, root = resolve(path_or_uri, filesystem)
    info = fs.get_file_info(pafs.FileSelector(f"{root}/{folder}", allow_not_found=True))
    files = sorted(i.path for i in info if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if not files:
        return schema.empty_table()
    return pa.concat_tables([pq.read_table(f, filesystem=fs, schema=schema) for f in files])
