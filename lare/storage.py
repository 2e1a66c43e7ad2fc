"""Local folders and S3 through one pyarrow filesystem API.

S3: the endpoint comes from $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL (MinIO, moto, on-prem), credentials
and region from the standard AWS environment or the instance role. Nothing here prints a credential.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
           "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs = {}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def resolve(path_or_uri: str, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it). s3://bucket/key uses the environment's endpoint and credentials;
    a URI with a query string (s3://b/k?endpoint_override=...) is handed to pyarrow as is."""
    path_or_uri = str(path_or_uri)
    parsed = urlparse(path_or_uri)
    if filesystem is not None:
        path = parsed.netloc + parsed.path if parsed.scheme else path_or_uri
        return filesystem, path.rstrip("/")
    if parsed.scheme == "s3" and not parsed.query:
        return s3_filesystem(), (parsed.netloc + parsed.path).rstrip("/")
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        fs, path = pafs.FileSystem.from_uri(path_or_uri)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(path_or_uri)


def public_uri(path_or_uri: str) -> str:
    """The URI without a query string or user info: safe to log and to store in a manifest."""
    parsed = urlparse(path_or_uri)
    if not parsed.scheme or len(parsed.scheme) == 1:
        return path_or_uri
    return f"{parsed.scheme}://{parsed.hostname or ''}{parsed.path}"


def read_bytes(path_or_uri: str) -> bytes:
    fs, path = resolve(path_or_uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def worker_env() -> dict[str, str]:
    """The storage environment Ray workers need (passed through runtime_env, never logged)."""
    return {k: os.environ[k] for k in AWS_ENV if k in os.environ}


def read_text(uri: str) -> str | None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def write_text(uri: str, text: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def upload_dir(local: str | Path, uri: str) -> str:
    """Copy a local directory to uri (local or S3); returns uri."""
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(Path(local).resolve()), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return uri


MASK = "***"
# scheme://user:password@host (the password may hold '/', as AWS keys do) and scheme://token@host
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?:[^\s/?#@:\"']*:[^\s@\"']*|[^\s/?#@:\"']+)@")
# key=value credentials in query strings (s3://b/p?access_key=..&secret_key=..), presigned URLs and free text
_SECRET_KEYS = ("aws_secret_access_key", "aws_access_key_id", "aws_session_token", "secret_access_key", "access_key_id",
                "access_key", "secret_key", "session_token", "security_token", "x-amz-security-token", "x-amz-credential",
                "x-amz-signature", "awsaccesskeyid", "signature", "sig", "password", "passwd", "client_secret",
                "api_key", "apikey", "token", "secret")
_KEY_VALUE = re.compile(r"(?i)(?<![\w-])((?:" + "|".join(re.escape(k) for k in _SECRET_KEYS) + r")=)[^&\s#\"',;]+")
_SECRET_FIELD = re.compile(r"(?i)(^|[^a-z])(secret|password|passwd|token|credentials?|api_?key|access_key|secret_key)($|[^a-z])")


def _env_secrets() -> list[str]:
    """Values of this process's credential variables (AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_PASSWORD, ...), longest
    first: hidden wherever they appear. Shorter than 8 characters they are not secrets (moto's `testing`)."""
    from lare.rayenv import is_secret_name

    values = {v for k, v in _environ_snapshot().items()
              if is_secret_name(k) and len(v) >= 8 and not k.endswith(("_PATH", "_FILE"))}
    return sorted(values, key=len, reverse=True)


def _environ_snapshot() -> dict[str, str]:
    """os.environ as a plain dict. Other threads (MLflow's telemetry) set and unset variables while we read: iterating
    os.environ then fails with KeyError or RuntimeError, so read again."""
    for _ in range(10):
        try:
            return dict(os.environ)
        except (KeyError, RuntimeError):
            continue
    return dict(os.environ)


def redact(text) -> str:
    """`text` with credentials hidden: URI user info, key=value credentials (query strings included) and the
    values of the credential variables in the environment."""
    text = _KEY_VALUE.sub(r"\1" + MASK, _USERINFO.sub(r"\1" + MASK + "@", str(text)))
    for value in _env_secrets():
        text = text.replace(value, MASK)
    return text


def redact_obj(obj):
    """A copy of a JSON-like value with every string (dict keys too: data.mixture is keyed by URIs) redacted,
    and the values of credential-named fields (password, token, secret_key, ...) masked."""
    if isinstance(obj, dict):
        return {redact(k) if isinstance(k, str) else k:
                (MASK if isinstance(v, str) and v and isinstance(k, str) and _SECRET_FIELD.search(k) else redact_obj(v))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    if isinstance(obj, str):
        return redact(obj)
    return obj
