#!/usr/bin/env python3
"""Offline checks of infra/k8s, the way an API server and kustomize would see it, without a cluster.

    python infra/k8s/check.py            # every problem on one line each; exit 1 when there is any

- core resources (Deployment, Service, PVC, ...) against the Kubernetes OpenAPI schemas of K8S_VERSION
  (kubernetes-validate, strict: unknown fields are errors, as with kubectl's default --validate=strict);
- RayCluster / RayJob / RayService against the openAPIV3Schema of KubeRay's CRDs (../shared/schemas/kuberay or
  $KUBERAY_CRDS), strict likewise, plus the few rules the CRDs state only in prose (submission modes,
  replica bounds, what a RayService needs to get its serve Service and ready workers);
- Ray Serve configs (infra/serve/*.yaml and every RayService's serveConfigV2) against Ray's own ServeDeploySchema,
  and strict: keys Ray would silently drop are errors;
- kustomizations: every resource and patch they name exists, every patch targets an object the
  kustomization has, every JSON patch path exists in its target, every image override names an image in use.
  This checks references, not the merge itself: `kubectl kustomize` does that when it is installed
  (`rendered()` uses it).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
K8S_VERSION = "1.33"
CRD_DIR = Path(os.environ.get("KUBERAY_CRDS", REPO.parent / "shared" / "schemas" / "kuberay"))
SERVE_DIR = REPO / "infra" / "serve"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
# KubeRay (ray-operator/controllers/ray/utils): RayService names are capped so that the RayCluster it generates
# (name + 6 characters) keeps its "-serve-svc" Service name within 63; the upgrade types it accepts; the name of the
# container port its serve Service and worker readiness probe use, and the port they assume without one.
MAX_RAYSERVICE_NAME = 47
RAYSERVICE_UPGRADES = {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}
SERVE_PORT_NAME, DEFAULT_SERVE_PORT = "serve", 8000
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 1-2 MB of YAML


def load_docs(path: Path) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.load_all(f, Loader=LOADER) if d is not None]


def kustomizations(root: Path = HERE) -> list[Path]:
    return sorted(root.rglob("kustomization.yaml"))


def patch_files(root: Path = HERE) -> set[Path]:
    out = set()
    for k in kustomizations(root):
        for p in load_docs(k)[0].get("patches", []) or []:
            if "path" in p:
                out.add((k.parent / p["path"]).resolve())
    return out


def resource_files(root: Path = HERE) -> list[Path]:
    """YAML files that hold whole objects (not kustomizations, not patches)."""
    patches = patch_files(root)
    return sorted(p for p in root.rglob("*.yaml") if p.name != "kustomization.yaml" and p.resolve() not in patches)


# ---- schemas ------------------------------------------------------------------------------------------
def strict_schema(schema: dict) -> dict:
    """An OpenAPI v3 structural schema -> JSON Schema that rejects unknown fields, as the API server's strict
    field validation does: objects with `properties` and no `additionalProperties` or
    `x-kubernetes-preserve-unknown-fields` get additionalProperties: false."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (node.get("type") == "object" and "properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(s)
    return s


def crd_validator(kind: str, version: str = "v1"):
    return _crd_validator(kind, version)


@functools.lru_cache(maxsize=None)
def _crd_validator(kind: str, version: str):
    import jsonschema

    path = CRD_DIR / CRD_FILES[kind]
    if not path.is_file():
        raise FileNotFoundError(f"KubeRay CRD {path} not found (set KUBERAY_CRDS to the folder holding {CRD_FILES[kind]})")
    crd = load_docs(path)[0]
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if version not in versions or not versions[version].get("served"):
        raise ValueError(f"{kind}: CRD {path.name} does not serve ray.io/{version}")
    schema = strict_schema(versions[version]["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is checked by the API server, not the CRD
    return jsonschema.Draft7Validator(schema)


def validate_kuberay(doc: dict) -> list[str]:
    kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
    where = f"{kind}/{name}"
    group, _, version = doc.get("apiVersion", "").partition("/")
    if group != "ray.io":
        return [f"{where}: apiVersion {doc.get('apiVersion')!r} is not ray.io/..."]
    errors = [f"{where}: {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
              for e in crd_validator(kind, version).iter_errors(doc)]
    spec = doc.get("spec", {})
    if kind == "RayJob":
        mode = spec.get("submissionMode", "K8sJobMode")
        if mode not in SUBMISSION_MODES:
            errors.append(f"{where}: spec.submissionMode {mode!r} is not one of {sorted(SUBMISSION_MODES)}")
        if spec.get("ttlSecondsAfterFinished") and not spec.get("shutdownAfterJobFinishes"):
            errors.append(f"{where}: ttlSecondsAfterFinished has no effect without shutdownAfterJobFinishes")
        if not spec.get("entrypoint") and mode != "InteractiveMode":
            errors.append(f"{where}: spec.entrypoint is required")
        cluster = spec.get("rayClusterSpec")
    elif kind == "RayService":
        errors += rayservice_rules(doc, where)
        cluster = spec.get("rayClusterConfig")
    else:
        cluster = spec
    for group_spec in (cluster or {}).get("workerGroupSpecs", []) or []:
        lo, hi = group_spec.get("minReplicas", 0), group_spec.get("maxReplicas", 2**31)
        n = group_spec.get("replicas", lo)
        if not all(isinstance(x, int) for x in (lo, n, hi)):
            continue  # a type error, reported by the schema above
        if not lo <= n <= hi:
            errors.append(f"{where}: worker group {group_spec.get('groupName')}: replicas {n} outside [{lo}, {hi}]")
    return errors


def _ports(container: dict) -> dict[str, int]:
    return {p.get("name"): p.get("containerPort") for p in container.get("ports", []) or [] if isinstance(p, dict)}


def rayservice_rules(doc: dict, where: str) -> list[str]:
    """What KubeRay checks or assumes about a RayService beyond its schema, and its serveConfigV2 checked as
    `serve deploy` would (the operator submits it to the dashboard without looking inside)."""
    errors = []
    spec = doc.get("spec", {})
    name = doc.get("metadata", {}).get("name", "")
    if len(name) > MAX_RAYSERVICE_NAME:
        errors.append(f"{where}: name longer than {MAX_RAYSERVICE_NAME} characters (KubeRay rejects it)")
    upgrade = (spec.get("upgradeStrategy") or {}).get("type")
    if upgrade is not None and upgrade not in RAYSERVICE_UPGRADES:
        errors.append(f"{where}: spec.upgradeStrategy.type {upgrade!r} is not one of {sorted(RAYSERVICE_UPGRADES)}")
    cluster = spec.get("rayClusterConfig") or {}
    if (cluster.get("authOptions") or {}).get("enableK8sTokenAuth"):
        errors.append(f"{where}: authOptions.enableK8sTokenAuth is not supported for a RayService")
    text = spec.get("serveConfigV2")
    if not text:
        return errors + [f"{where}: spec.serveConfigV2 is empty: the cluster would run without an application"]
    if not isinstance(text, str):
        return errors  # a type error, reported by the schema
    try:
        serve = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return errors + [f"{where}: spec.serveConfigV2 is not YAML: {' '.join(str(e).split())}"]
    serve_errors = validate_serve_config(serve)
    errors += [f"{where}: spec.serveConfigV2: {e}" for e in serve_errors]
    if serve_errors:
        return errors
    http = serve.get("http_options") or {}
    port = http.get("port", DEFAULT_SERVE_PORT)
    if http.get("host", "0.0.0.0") in LOOPBACK_HOSTS:
        errors.append(f"{where}: serveConfigV2 http_options.host {http['host']!r}: the serve Service reaches the "
                      "proxies at the pod IP, not its loopback")
    if serve.get("proxy_location", "EveryNode") != "EveryNode":
        errors.append(f"{where}: serveConfigV2 proxy_location {serve['proxy_location']!r}: KubeRay's readiness probe "
                      "asks every worker's proxy, so it must be EveryNode")
    head = ((cluster.get("headGroupSpec") or {}).get("template") or {}).get("spec", {}).get("containers") or [{}]
    head_port = _ports(head[0]).get(SERVE_PORT_NAME)
    if head_port is None:
        errors.append(f"{where}: the head container has no port named {SERVE_PORT_NAME!r}: KubeRay creates no "
                      "serve Service")
    elif head_port != port:
        errors.append(f"{where}: head port {SERVE_PORT_NAME!r} is {head_port}, the proxies listen on {port}")
    for group in cluster.get("workerGroupSpecs", []) or []:
        containers = (group.get("template") or {}).get("spec", {}).get("containers") or [{}]
        probed = _ports(containers[0]).get(SERVE_PORT_NAME, DEFAULT_SERVE_PORT)
        if probed != port:
            errors.append(f"{where}: worker group {group.get('groupName')}: readiness probe on port {probed}, "
                          f"the proxies listen on {port}")
    return errors


# ---- Ray Serve configs -----------------------------------------------------------------------------------
def validate_serve_config(config) -> list[str]:
    """A Serve config (a `serve deploy` file, a RayService's serveConfigV2) against Ray's own ServeDeploySchema, and
    strict: Ray's models ignore fields they do not know (forward compatibility), so a misspelt `num_gpu` would
    deploy replicas without GPUs and say nothing."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    if not isinstance(config, dict):
        return [f"<root>: a Serve config is a mapping, not {type(config).__name__}"]
    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as e:
        return [f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors()]
    return _unknown_keys(ServeDeploySchema, config, "")


def _model_classes(annotation) -> list[type]:
    """The pydantic models a field's annotation admits (through Optional, Union, List)."""
    from typing import get_args

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _model_classes(arg)]


def _unknown_keys(model: type, raw: dict, where: str) -> list[str]:
    errors = []
    fields = model.model_fields
    names = {alias: n for n, f in fields.items() for alias in (n, f.alias) if alias}
    for key, value in raw.items():
        at = f"{where}.{key}" if where else str(key)
        if key not in names:
            errors.append(f"{at}: not a field of Ray's {model.__name__} (Ray would ignore it)")
            continue
        models = _model_classes(fields[names[key]].annotation)
        if not models:
            continue  # a free-form dict (args, runtime_env) or a scalar: the builder or Ray's validators judge it
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, dict):
                errors += _unknown_keys(models[0], item, f"{at}.{i}" if isinstance(value, list) else at)
    return errors


def serve_files(root: Path = SERVE_DIR) -> list[Path]:
    return sorted(root.glob("*.yaml")) if root.is_dir() else []


def validate_core(doc: dict) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = "/".join(map(str, e.absolute_path)) or "<root>"
        return [f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {path}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: no schema for {doc.get('apiVersion')} "
                f"{doc.get('kind')} in Kubernetes {K8S_VERSION}"]
    return []


def validate_doc(doc: dict) -> list[str]:
    if doc.get("kind") in CRD_FILES:
        return validate_kuberay(doc)
    return validate_core(doc)


# ---- kustomize references -------------------------------------------------------------------------
def _objects(kdir: Path, seen=None) -> list[dict]:
    """Objects a kustomization directory includes through `resources` (recursively), unpatched."""
    seen = seen if seen is not None else set()
    if kdir in seen:
        return []
    seen.add(kdir)
    out = []
    for res in load_docs(kdir / "kustomization.yaml")[0].get("resources", []) or []:
        path = (kdir / res).resolve()
        if path.is_dir():
            out += _objects(path, seen)
        elif path.is_file():
            out += load_docs(path)
    return out


def _json_pointer_ok(obj, pointer: str, op: str) -> bool:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")]
    if op == "add":
        parts = parts[:-1]  # RFC 6902: `add` needs the parent to exist; the leaf may be new
    node = obj
    for part in parts:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def _images(obj) -> set[str]:
    found = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("containers", "initContainers") and isinstance(v, list):
                found |= {c.get("image", "") for c in v if isinstance(c, dict)}
            else:
                found |= _images(v)
    elif isinstance(obj, list):
        for v in obj:
            found |= _images(v)
    return found


def _rel(path: Path) -> Path:
    try:
        return path.relative_to(REPO)
    except ValueError:
        return path


def check_kustomization(kfile: Path) -> list[str]:
    k = load_docs(kfile)[0]
    rel = _rel(kfile)
    errors = []
    for res in k.get("resources", []) or []:
        path = (kfile.parent / res).resolve()
        if not (path.is_file() or (path / "kustomization.yaml").is_file()):
            errors.append(f"{rel}: resource {res!r} is neither a file nor a kustomization directory")
    objects = _objects(kfile.parent)
    index = {(o.get("kind"), o.get("metadata", {}).get("name")): o for o in objects}
    for p in k.get("patches", []) or []:
        if "path" not in p:
            continue
        path = kfile.parent / p["path"]
        if not path.is_file():
            errors.append(f"{rel}: patch {p['path']!r} does not exist")
            continue
        docs = load_docs(path)
        target = p.get("target")
        if target:
            obj = index.get((target.get("kind"), target.get("name")))
            if obj is None:
                errors.append(f"{rel}: patch {p['path']} targets {target.get('kind')}/{target.get('name')}, not in its resources")
                continue
            ops = docs[0] if docs and isinstance(docs[0], list) else None
            for op in ops or []:
                if not _json_pointer_ok(obj, op["path"], op["op"]):
                    errors.append(f"{rel}: patch {p['path']}: {op['op']} {op['path']} does not resolve in "
                                  f"{target.get('kind')}/{target.get('name')}")
        else:
            for d in docs:
                key = (d.get("kind"), d.get("metadata", {}).get("name"))
                if key not in index:
                    errors.append(f"{rel}: patch {p['path']} patches {key[0]}/{key[1]}, not in its resources")
    used = set().union(*(_images(o) for o in objects)) if objects else set()
    for img in k.get("images", []) or []:
        if not any(u.split(":")[0].split("@")[0] == img["name"] for u in used):
            errors.append(f"{rel}: image override {img['name']!r} matches no container image")
    return errors


# ---- rendering (when a kustomize binary exists) ------------------------------------------------------
def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def rendered(overlay: Path) -> list[dict]:
    cmd = kustomize_command()
    if cmd is None:
        raise FileNotFoundError("neither kustomize nor kubectl is installed")
    out = subprocess.run([*cmd, str(overlay)], capture_output=True, text=True, timeout=60)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} {overlay} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def main() -> int:
    problems = []
    for f in resource_files():
        for doc in load_docs(f):
            problems += [f"{_rel(f)}: {e}" for e in validate_doc(doc)]
    for k in kustomizations():
        problems += check_kustomization(k)
    for f in serve_files():
        for doc in load_docs(f):
            problems += [f"{_rel(f)}: {e}" for e in validate_serve_config(doc)]
    if kustomize_command():
        for overlay in sorted((HERE / "overlays").iterdir()):
            try:
                docs = rendered(overlay)
            except RuntimeError as e:
                problems.append(str(e))
                continue
            for doc in docs:
                problems += [f"{_rel(overlay)} (rendered): {e}" for e in validate_doc(doc)]
    for p in problems:
        print(p)
    print(json.dumps({"problems": len(problems), "kubernetes": K8S_VERSION, "crds": str(CRD_DIR)}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
