"""infra/docker: no Docker engine here, so the Dockerfiles are checked statically: a small parser of the
instruction stream (continuations, comments, build args), then the rules the image must follow."""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import pytest

from infra_helpers import REPO

DOCKER = REPO / "infra" / "docker"
KNOWN = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER", "WORKDIR",
         "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        buf += " " + stripped.rstrip("\\").strip() if buf else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    assert not buf, f"{path}: dangling line continuation"
    return out


def resolve_args(instrs) -> dict:
    args = {}
    for word, rest in instrs:
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v.strip('"')
    return args


def expand(text: str, args: dict) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


@pytest.mark.parametrize("name", ["Dockerfile", "mlflow.Dockerfile"])
def test_common_rules(name):
    instrs = instructions(DOCKER / name)
    words = [w for w, _ in instrs]
    assert set(words) <= KNOWN, set(words) - KNOWN
    args = resolve_args(instrs)
    (base,) = [expand(r, args) for w, r in instrs if w == "FROM"]
    image, _, tag = base.rpartition(":")
    assert image and tag and tag != "latest", f"unpinned base image {base}"
    users = [r for w, r in instrs if w == "USER"]
    assert users, "runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "the last USER must be a numeric non-root UID (Kubernetes runAsNonRoot)"
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN"), "nothing runs as root after USER"
    for w, r in instrs:
        if w in ("ENV", "ARG"):
            assert not re.search(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", r, re.I), f"{w} {r}: secrets never go in an image"
    assert "ADD" not in words, "COPY, not ADD (no remote URLs or auto-extraction)"


def test_training_image():
    instrs = instructions(DOCKER / "Dockerfile")
    args = resolve_args(instrs)
    base = expand(next(r for w, r in instrs if w == "FROM"), args)
    assert base.startswith("nvidia/cuda:12.") and "ubuntu22.04" in base
    runs = [expand(r, args) for w, r in instrs if w == "RUN"]
    joined = " && ".join(runs)
    assert "python3.11" in joined and "/opt/venv" in joined
    torch_i = next(i for i, r in enumerate(runs) if "torch==" in r)
    proj_i = next(i for i, r in enumerate(runs) if re.search(r"pip install \"?\.(\[[\w,]+\])?\"?(\s|$)", r))
    # The RayService (infra/k8s/serve) runs Ray Serve in this image: the project's serve extra must be installed.
    extras = re.search(r"pip install \"?\.(\[([\w,]+)\])?", runs[proj_i]).group(2) or ""
    assert "serve" in extras.split(","), runs[proj_i]
    assert torch_i < proj_i, "torch (pinned CUDA build) must be installed before the project"
    assert re.search(r"torch==\d+\.\d+\.\d+", runs[torch_i]) and "download.pytorch.org/whl/cu" in runs[torch_i]
    assert "wget" in joined and "bash" in joined  # KubeRay's probes and pod command
    workdir = [r for w, r in instrs if w == "WORKDIR"]
    assert workdir == ["/app"]  # the RayJob's entrypoint runs from here (infra/k8s: workingDir /app)
    copied = [shlex.split(r)[:-1] for w, r in instrs if w == "COPY"]
    sources = [s for srcs in copied for s in srcs if not s.startswith("--")]
    for needed in ("pyproject.toml", "lare", "jobs", "configs"):
        assert needed in sources, f"the image lacks {needed}"
    for s in sources:
        if s == "jobs" and not (REPO / s).exists():
            continue  # jobs/ arrives with the data and training branches; the image copies it then
        assert (REPO / s).exists(), f"COPY {s}: not in the repository"


def dockerignore_excludes(path: str) -> bool:
    """True when .dockerignore keeps `path` out of the build context (last matching rule wins)."""
    excluded = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:] if neg else line
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat.rstrip("/*") + "/*") or path == pat.rstrip("/*"):
            excluded = not neg
    return excluded


def test_dockerignore_keeps_secrets_and_state_out_and_sources_in():
    for path in (".git/config", ".venv/bin/python", ".stack/env", ".stack/ray_auth_token", "data/traces/x.parquet",
                 "runs/ckpt/model.safetensors", "mlflow.db", "tests/core/test_model.py", "lare/__pycache__/x.pyc",
                 ".env", "infra/k8s/base/rayjob.yaml"):
        assert dockerignore_excludes(path), f"{path} would be sent to the Docker daemon"
    instrs = instructions(DOCKER / "Dockerfile")
    for w, r in instrs:
        if w == "COPY":
            for src in shlex.split(r)[:-1]:
                probe = src if (REPO / src).is_file() else f"{src}/module.py"
                assert not dockerignore_excludes(probe), f"COPY {src}: excluded by .dockerignore"


def test_mlflow_image():
    instrs = instructions(DOCKER / "mlflow.Dockerfile")
    runs = " ".join(r for w, r in instrs if w == "RUN")
    assert '"mlflow==3.17.2"' in runs and "psycopg2-binary==" in runs and "boto3==" in runs
    import mlflow

    assert mlflow.__version__ == "3.17.2", "keep the server image on the MLflow version the project tests"
    entry = next(r for w, r in instrs if w == "ENTRYPOINT")
    assert entry == '["mlflow"]'


def test_parser_sees_continuations_and_comments(tmp_path):
    f = tmp_path / "Dockerfile"
    f.write_text("# c\nFROM a:1\nRUN echo 1 \\\n  # inner comment\n  && echo 2\nUSER 1000\n")
    assert instructions(f) == [("FROM", "a:1"), ("RUN", "echo 1 && echo 2"), ("USER", "1000")]
