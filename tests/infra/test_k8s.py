"""infra/k8s offline: YAML parses, core objects pass kubernetes-validate (strict), KubeRay objects pass the
CRDs' openAPIV3Schema (strict), the RayService's serveConfigV2 passes Ray's ServeDeploySchema (strict) and agrees
with infra/serve/lare.yaml, kustomizations reference what exists, the overlays build (when kubectl or kustomize is
installed), and the manifests say what a production KubeRay deployment needs."""

from __future__ import annotations

import copy
import re
import shlex
import sys

import pytest
import yaml

from infra_helpers import KUBERAY_SCHEMAS, REPO

from infra.k8s import check

K8S = REPO / "infra" / "k8s"
OVERLAYS = {"dev": "lare-dev", "prod": "lare"}
SERVE_OVERLAYS = {"prod-serve": ("lare", "prod")}  # serving overlay: (namespace, the platform overlay it runs beside)
SERVE_CONFIG = REPO / "infra" / "serve" / "lare.yaml"
needs_crds = pytest.mark.skipif(not (KUBERAY_SCHEMAS / "ray.io_rayjobs.yaml").is_file(),
                                reason=f"KubeRay CRDs not found at {KUBERAY_SCHEMAS} (../shared/schemas/kuberay)")
needs_kustomize = pytest.mark.skipif(check.kustomize_command() is None,
                                     reason="neither kustomize nor kubectl is installed: overlays not rendered "
                                            "(the reference checks still run)")
SECRETS = {"lare-aws", "lare-mlflow-db"}  # the only Secrets the manifests read (docs/infra.md creates them)


def docs_of(name: str) -> list[dict]:
    return check.load_docs(K8S / name)


def base_object(kind: str, name: str | None = None) -> dict:
    for f in check.resource_files(K8S):
        for d in check.load_docs(f):
            if d["kind"] == kind and (name is None or d["metadata"]["name"] == name):
                return d
    raise LookupError(kind)


@pytest.fixture(scope="module")
def rendered():
    if not check.kustomize_command():
        return {}
    return {name: check.rendered(K8S / "overlays" / name) for name in [*OVERLAYS, *SERVE_OVERLAYS]}


def test_every_yaml_under_infra_parses():
    files = sorted((REPO / "infra").rglob("*.yaml"))
    assert len(files) >= 20
    for f in files:
        docs = check.load_docs(f)
        assert docs, f"{f} is empty"


def _strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


CREDENTIAL = re.compile(r"://[^/\s:@]+:[^/\s@]+@|AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY")


def test_no_secret_objects_and_no_inline_credentials():
    for f in (REPO / "infra").rglob("*.yaml"):
        for doc in check.load_docs(f):
            assert not (isinstance(doc, dict) and doc.get("kind") == "Secret"), f"{f}: Secrets are created out of band"
            leaked = [v for v in _strings(doc) if CREDENTIAL.search(v)]
            assert not leaked, f"{f}: credentials in a value: {leaked}"
    for f in check.resource_files(K8S):
        for doc in check.load_docs(f):
            for env in _envs(doc):
                if "value" in env:
                    assert not any(w in env["name"] for w in ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY")), env
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in SECRETS, ref
                    if ref["name"] == "lare-aws":
                        assert ref.get("optional") is True  # IRSA / workload identity: no keys at all


def _envs(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "env" and isinstance(v, list):
                yield from v
            else:
                yield from _envs(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _envs(v)


def _containers(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "containers" and isinstance(v, list):
                yield from v
            else:
                yield from _containers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _containers(v)


@pytest.mark.parametrize("path", [p.relative_to(K8S).as_posix() for p in check.resource_files(K8S)
                                  if all(d["kind"] not in check.CRD_FILES for d in check.load_docs(p))])
def test_core_resources_pass_kubernetes_validate(path):
    for doc in docs_of(path):
        assert check.validate_core(doc) == []


def test_kubernetes_validate_catches_mistakes():
    dep = base_object("Deployment", "mlflow")
    bad = copy.deepcopy(dep)
    bad["spec"]["replicas"] = "two"
    assert "replicas" in check.validate_core(bad)[0]
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    assert "livenesProbe" in check.validate_core(bad)[0]


@needs_crds
@pytest.mark.parametrize("path", ["base/rayjob.yaml", "interactive/raycluster.yaml", "serve/rayservice.yaml"])
def test_kuberay_objects_pass_the_crd_schemas(path):
    for doc in docs_of(path):
        assert doc["apiVersion"] == "ray.io/v1"
        assert check.validate_kuberay(doc) == []


@needs_crds
def test_crd_validation_catches_mistakes():
    rj = base_object("RayJob")
    cases = {
        "templat": lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"].update(templat={}),
        "is not of type 'integer'": lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas="2"),
        "'groupName' is a required property": lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"),
        "resurces": lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        .update(resurces={}),
        "outside [2, 2]": lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas=3),
        "submissionMode": lambda d: d["spec"].update(submissionMode="K8sJob"),
        "'token', 'disabled'": lambda d: d["spec"]["rayClusterSpec"]["authOptions"].update(mode="on"),
    }
    for expected, mutate in cases.items():
        bad = copy.deepcopy(rj)
        mutate(bad)
        errors = check.validate_kuberay(bad)
        assert errors, f"no error for {expected}"
        if expected == "'token', 'disabled'":
            assert "is not one of" in errors[0], errors
        else:
            assert expected in " ".join(errors), errors


def _serve_config_of(rs: dict) -> dict:
    return yaml.safe_load(rs["spec"]["serveConfigV2"])


def _with_serve_config(rs: dict, mutate) -> dict:
    cfg = _serve_config_of(rs)
    mutate(cfg)
    rs["spec"]["serveConfigV2"] = yaml.safe_dump(cfg, sort_keys=False)
    return rs


@needs_crds
def test_rayservice_validation_catches_mistakes():
    rs = base_object("RayService")
    cluster = lambda d: d["spec"]["rayClusterConfig"]  # noqa: E731
    head = lambda d: cluster(d)["headGroupSpec"]["template"]["spec"]["containers"][0]  # noqa: E731
    worker = lambda d: cluster(d)["workerGroupSpecs"][0]  # noqa: E731
    app = lambda c: c["applications"][0]  # noqa: E731
    cases = {
        # the CRD, strictly: unknown fields at the top, in the cluster and in a pod template; types; required fields
        "'serveConfig' was unexpected": lambda d: d["spec"].update(serveConfig="x"),
        "'enableInTreeAutoscalin' was unexpected": lambda d: cluster(d).update(enableInTreeAutoscalin=True),
        "'volumMounts' was unexpected": lambda d: head(d).update(volumMounts=[]),
        "'rayClusterConfig' is a required property": lambda d: d["spec"].pop("rayClusterConfig"),
        "is not of type 'integer'": lambda d: worker(d).update(maxReplicas="4"),
        "is not of type 'string'": lambda d: d["spec"].update(serveConfigV2={"applications": []}),
        # what KubeRay states in prose
        "outside [1, 4]": lambda d: worker(d).update(replicas=5),
        "upgradeStrategy.type 'Recreate'": lambda d: d["spec"]["upgradeStrategy"].update(type="Recreate"),
        "longer than 47": lambda d: d["metadata"].update(name="lare-" + "x" * 43),
        "no port named 'serve'": lambda d: head(d).update(ports=[p for p in head(d)["ports"] if p["name"] != "serve"]),
        "readiness probe on port 8001": lambda d: worker(d)["template"]["spec"]["containers"][0].update(
            ports=[{"name": "serve", "containerPort": 8001}]),
        "serveConfigV2 is empty": lambda d: d["spec"].pop("serveConfigV2"),
        "serveConfigV2 is not YAML": lambda d: d["spec"].update(serveConfigV2="applications: [\n"),
        # serveConfigV2 against Ray's ServeDeploySchema, and the keys Ray would drop
        "num_gpu: not a field of Ray's RayActorOptionsSchema": lambda d: _with_serve_config(
            d, lambda c: app(c)["deployments"][0]["ray_actor_options"].update(num_gpu=1)),
        "max_replica: not a field of Ray's AutoscalingConfig": lambda d: _with_serve_config(
            d, lambda c: app(c)["deployments"][0]["autoscaling_config"].update(max_replica=8)),
        "Manually setting num_replicas is not allowed": lambda d: _with_serve_config(
            d, lambda c: app(c)["deployments"][0].update(num_replicas=2)),
        "import path may have at most one colon": lambda d: _with_serve_config(
            d, lambda c: app(c).update(import_path="lare.serve:app:app_builder")),
        "greater than or equal to 0": lambda d: _with_serve_config(
            d, lambda c: app(c)["deployments"][0]["ray_actor_options"].update(num_gpus=-1)),
        "http_options.host '127.0.0.1'": lambda d: _with_serve_config(
            d, lambda c: c["http_options"].update(host="127.0.0.1")),
        "head port 'serve' is 8000, the proxies listen on 9000": lambda d: _with_serve_config(
            d, lambda c: c["http_options"].update(port=9000)),
        "proxy_location 'HeadOnly'": lambda d: _with_serve_config(d, lambda c: c.update(proxy_location="HeadOnly")),
    }
    for expected, mutate in cases.items():
        bad = copy.deepcopy(rs)
        mutate(bad)
        errors = check.validate_kuberay(bad)
        assert expected in " | ".join(errors), (expected, errors)
    assert check.validate_kuberay(copy.deepcopy(rs)) == []


def test_kustomizations_reference_what_exists():
    problems = [p for k in check.kustomizations(K8S) for p in check.check_kustomization(k)]
    assert problems == []
    assert {k.parent.name for k in check.kustomizations(K8S)} >= {"base", "dev", "prod", "interactive", "serve",
                                                                   "prod-serve"}
    # Serving is applied on its own, after training has exported a model: no platform overlay includes it.
    for overlay in OVERLAYS:
        assert "RayService" not in {d["kind"] for d in check._objects(K8S / "overlays" / overlay)}


def test_reference_check_catches_broken_kustomizations(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "svc.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "mlflow"},
                                                   "spec": {"ports": [{"port": 5000}]}}))
    (base / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["svc.yaml", "gone.yaml"]}))
    ov = tmp_path / "ov"
    ov.mkdir()
    (ov / "smp.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "mlflw"}}))
    (ov / "ops.yaml").write_text(yaml.safe_dump([{"op": "replace", "path": "/spec/ports/3/port", "value": 1}]))
    (ov / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": ["../base"],
        "images": [{"name": "lare", "newTag": "x"}],
        "patches": [{"path": "smp.yaml"}, {"path": "missing.yaml"},
                    {"path": "ops.yaml", "target": {"kind": "Service", "name": "mlflow"}},
                    {"path": "ops.yaml", "target": {"kind": "Deployment", "name": "mlflow"}}]}))
    problems = " | ".join(check.check_kustomization(base / "kustomization.yaml") + check.check_kustomization(ov / "kustomization.yaml"))
    for expected in ("'gone.yaml'", "Service/mlflw", "'missing.yaml'", "/spec/ports/3/port",
                     "Deployment/mlflow, not in its resources", "image override 'lare'"):
        assert expected in problems, problems


@needs_kustomize
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_build_and_validate(rendered, overlay):
    docs = rendered[overlay]
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service",
            "NetworkPolicy", "RayJob"} <= kinds
    assert "Secret" not in kinds
    for d in docs:
        if d["kind"] in check.CRD_FILES and not (KUBERAY_SCHEMAS / "ray.io_rayjobs.yaml").is_file():
            continue
        assert check.validate_doc(d) == [], d["kind"]
        if d["kind"] == "Namespace":
            assert d["metadata"]["name"] == OVERLAYS[overlay]
            assert d["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
        else:
            assert d["metadata"]["namespace"] == OVERLAYS[overlay]
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "lare"
    for c in (c for d in docs for c in _containers(d)):
        image = c["image"]
        assert "/" in image and ":" in image.rsplit("/", 1)[1] and not image.endswith(":latest"), image


@needs_kustomize
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayjob_workers_match_the_training_config(rendered, overlay):
    """GPU workers x GPUs per worker == train.num_workers of the config and overrides in the entrypoint."""
    from lare.config import load_config

    (rj,) = [d for d in rendered[overlay] if d["kind"] == "RayJob"]
    argv = shlex.split(rj["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/train.py"]
    config = argv[argv.index("--config") + 1]
    overrides = [a for a in argv[2:] if "=" in a]
    cfg = load_config(REPO / config, overrides)
    gpus = sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
               for g in rj["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert gpus == cfg.train.num_workers and cfg.train.use_gpu


@needs_kustomize
def test_overlay_specifics(rendered):
    dev, prod = ({(d["kind"], d["metadata"]["name"]): d for d in rendered[o]} for o in ("dev", "prod"))
    ml_dev = dev[("Deployment", "mlflow")]["spec"]
    env = {e["name"]: e for e in ml_dev["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"] == {"name": "MLFLOW_BACKEND_STORE_URI", "value": "sqlite:////mlflow/mlflow.db"}
    assert ml_dev["replicas"] == 1 and ml_dev["strategy"]["type"] == "Recreate"
    assert {v["persistentVolumeClaim"]["claimName"] for v in ml_dev["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v} == {"mlflow-data"}
    assert ("RayCluster", "lare") in dev and ("RayCluster", "lare") not in prod
    ml_prod = prod[("Deployment", "mlflow")]["spec"]
    env = {e["name"]: e for e in ml_prod["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "lare-mlflow-db", "key": "uri"}
    assert ml_prod["replicas"] == 2 and ("PodDisruptionBudget", "mlflow") in prod
    assert prod[("ServiceAccount", "lare-ray")]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    workers = prod[("RayJob", "lare-train")]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"] == "p5.48xlarge"
    assert ":0.1.0" in workers["template"]["spec"]["containers"][0]["image"]


@needs_kustomize
@pytest.mark.parametrize("overlay", SERVE_OVERLAYS)
def test_serve_overlay_builds_and_runs_the_platform_image(rendered, overlay):
    namespace, platform = SERVE_OVERLAYS[overlay]
    docs = rendered[overlay]
    assert [d["kind"] for d in docs] == ["RayService"]  # the platform comes from its own overlay, applied first
    (rs,) = docs
    if (KUBERAY_SCHEMAS / "ray.io_rayservices.yaml").is_file():
        assert check.validate_doc(rs) == []
    assert rs["metadata"]["namespace"] == namespace
    assert rs["metadata"]["labels"]["app.kubernetes.io/part-of"] == "lare"
    platform_images = {c["image"] for d in rendered[platform] for c in _containers(d) if "/lare:" in c["image"]}
    serve_images = {c["image"] for c in _containers(rs)}
    assert len(platform_images) == 1 and serve_images == platform_images  # training and serving on one release
    platform_objects = {(d["kind"], d["metadata"]["name"]) for d in rendered[platform]}
    for pod in (g["template"]["spec"] for g in [rs["spec"]["rayClusterConfig"]["headGroupSpec"],
                                                *rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]]):
        assert ("ServiceAccount", pod["serviceAccountName"]) in platform_objects
        for c in pod["containers"]:
            for ref in c["envFrom"]:
                assert ("ConfigMap", ref["configMapRef"]["name"]) in platform_objects
        for v in pod["volumes"]:
            if "persistentVolumeClaim" in v:
                assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in platform_objects
    workers = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    train = next(d for d in rendered[platform] if d["kind"] == "RayJob")["spec"]["rayClusterSpec"]
    assert workers["nodeSelector"] == train["workerGroupSpecs"][0]["template"]["spec"]["nodeSelector"]
    assert (rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["nodeSelector"]
            == train["headGroupSpec"]["template"]["spec"]["nodeSelector"])


def _pod_specs(cluster_spec: dict):
    yield "head", cluster_spec["headGroupSpec"]["template"]["spec"]
    for g in cluster_spec["workerGroupSpecs"]:
        yield g["groupName"], g["template"]["spec"]


def test_rayjob_has_what_a_training_run_needs():
    rj = base_object("RayJob")
    s = rj["spec"]
    assert s["entrypoint"] == "python jobs/train.py --config configs/qwen2.5-vl-7b.yaml"
    assert (REPO / "configs/qwen2.5-vl-7b.yaml").is_file()
    assert s["shutdownAfterJobFinishes"] is True and s["ttlSecondsAfterFinished"] > 0
    assert s["submissionMode"] == "K8sJobMode" and s["activeDeadlineSeconds"] > 0
    c = s["rayClusterSpec"]
    import ray

    assert c["rayVersion"] == ray.__version__, "the image's Ray and rayVersion must match"
    assert c["authOptions"]["mode"] == "token"
    head = c["headGroupSpec"]["template"]["spec"]
    assert c["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (hc,) = head["containers"]
    assert "nvidia.com/gpu" not in hc["resources"]["limits"] and "nvidia.com/gpu" not in hc["resources"]["requests"]
    (group,) = c["workerGroupSpecs"]
    w = group["template"]["spec"]
    (wc,) = w["containers"]
    assert wc["resources"]["limits"]["nvidia.com/gpu"] == 8 == wc["resources"]["requests"]["nvidia.com/gpu"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in w["tolerations"]
    assert w["nodeSelector"]
    for name, pod in _pod_specs(c):
        (ctr,) = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["serviceAccountName"] == "lare-ray"
        for res in ("cpu", "memory"):
            assert ctr["resources"]["requests"][res] == ctr["resources"]["limits"][res], f"{name}: Guaranteed QoS"
        shm = [v for v in pod["volumes"] if v["name"] == "dshm"]
        assert shm and shm[0]["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in ctr["volumeMounts"]
        assert {"configMapRef": {"name": "lare-config"}} in ctr["envFrom"]
        env = {e["name"]: e for e in ctr["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "lare-aws"
        assert ctr["workingDir"] == "/app"


def test_interactive_raycluster_runs_the_same_pods_as_the_rayjob():
    job = base_object("RayJob")["spec"]["rayClusterSpec"]
    cluster = docs_of("interactive/raycluster.yaml")[0]["spec"]
    assert cluster["headGroupSpec"] == job["headGroupSpec"]
    for a, b in zip(cluster["workerGroupSpecs"], job["workerGroupSpecs"], strict=True):
        strip = lambda g: {k: v for k, v in g.items() if k not in ("replicas", "minReplicas", "maxReplicas")}  # noqa: E731
        assert strip(a) == strip(b)
        assert a["minReplicas"] == 0 and a["maxReplicas"] >= 1
    assert cluster["enableInTreeAutoscaling"] is True and cluster["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert cluster["authOptions"] == job["authOptions"]


def _without_serve_port(pod: dict) -> dict:
    pod = copy.deepcopy(pod)
    for c in pod["containers"]:
        c["ports"] = [p for p in c.get("ports", []) if p["name"] != "serve"]
        if not c["ports"]:
            del c["ports"]
    return pod


def test_rayservice_runs_the_training_pods_with_one_gpu_per_worker():
    """The serving cluster is the RayJob's: same head (plus the serve port), workers from the same template but
    sized for one replica (one GPU, a small object store), the autoscaler of the interactive cluster."""
    job = base_object("RayJob")["spec"]["rayClusterSpec"]
    svc = base_object("RayService")["spec"]["rayClusterConfig"]
    assert svc["rayVersion"] == job["rayVersion"] and svc["authOptions"] == job["authOptions"]
    head = copy.deepcopy(svc["headGroupSpec"])
    head["template"]["spec"] = _without_serve_port(head["template"]["spec"])
    assert head == job["headGroupSpec"]
    assert svc["enableInTreeAutoscaling"] is True
    assert svc["autoscalerOptions"] == docs_of("interactive/raycluster.yaml")[0]["spec"]["autoscalerOptions"]
    (serve_group,), (train_group,) = svc["workerGroupSpecs"], job["workerGroupSpecs"]
    pod, train_pod = _without_serve_port(serve_group["template"]["spec"]), train_group["template"]["spec"]
    def unsized(p: dict) -> dict:  # everything but the size: resources and the /dev/shm volume
        return {**p, "containers": [{k: v for k, v in c.items() if k != "resources"} for c in p["containers"]],
                "volumes": [v for v in p["volumes"] if v["name"] != "dshm"]}

    assert unsized(pod) == unsized(train_pod)
    (c,) = pod["containers"]
    assert c["resources"]["requests"] == c["resources"]["limits"]  # Guaranteed QoS, as training
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]
    store = int(serve_group["rayStartParams"]["object-store-memory"])
    assert shm["medium"] == "Memory" and store < _bytes(shm["sizeLimit"])  # Ray keeps its store in /dev/shm


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def _cpus(quantity) -> float:
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def test_rayservice_capacity_matches_the_serve_deployment():
    """Every replica Serve may ask for fits a pod the cluster may add, and no pod is left without a replica."""
    rs = base_object("RayService")["spec"]
    cfg = _serve_config_of({"spec": rs})
    (app,) = cfg["applications"]
    (dep,) = app["deployments"]
    (group,) = rs["rayClusterConfig"]["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    opts, scale, args = dep["ray_actor_options"], dep["autoscaling_config"], app["args"]
    assert opts["num_gpus"] == args["num_gpus"] == int(limits["nvidia.com/gpu"])  # one replica per pod
    assert opts["num_cpus"] < _cpus(limits["cpu"])  # room for the proxy and Ray's own processes
    assert scale["max_replicas"] * opts["num_gpus"] == group["maxReplicas"] * int(limits["nvidia.com/gpu"])
    assert scale["min_replicas"] * opts["num_gpus"] <= group["minReplicas"] * int(limits["nvidia.com/gpu"])
    assert scale["min_replicas"] <= args["num_replicas"] <= scale["max_replicas"]
    # Autoscaling reacts only below the replica's cap, and a replica can hold a full batch plus the next.
    assert args["max_batch_size"] <= scale["target_ongoing_requests"] < dep["max_ongoing_requests"]
    assert dep["max_ongoing_requests"] >= 2 * args["max_batch_size"]
    assert scale["downscale_delay_s"] >= 300 > scale["upscale_delay_s"]  # replicas are slow to start, keep them


def test_rayservice_serves_the_training_runs_export():
    """The model is what the RayJob's run exports (lare.train.launch.storage: <storage_path>/<experiment>/export),
    with a token budget that covers the config's own decoding."""
    from lare.config import load_config

    argv = shlex.split(base_object("RayJob")["spec"]["entrypoint"])
    cfg = load_config(REPO / argv[argv.index("--config") + 1])
    args = _serve_config_of(base_object("RayService"))["applications"][0]["args"]
    assert args["model"] == f"{cfg.train.storage_path.rstrip('/')}/{cfg.train.experiment}/export"
    assert args["max_tokens_limit"] >= cfg.data.max_new_tokens


def test_rayservice_is_reached_through_a_cluster_ip_only():
    """Serve's HTTP proxy has no authentication of its own: no LoadBalancer or NodePort, no custom serve Service."""
    rs = base_object("RayService")["spec"]
    assert "serveService" not in rs
    assert rs["rayClusterConfig"]["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    assert rs["excludeHeadPodFromServeSvc"] is True  # requests go to the GPU workers' proxies, not the GCS's pod
    assert rs["upgradeStrategy"]["type"] == "NewCluster"


def test_rayservice_runs_the_application_of_the_serve_config():
    """serveConfigV2 and infra/serve/lare.yaml are one application: the same builder, argument names, routes and
    deployments. The values that differ are the cluster's: where the model is, GPUs, scaling, the bind address."""
    cluster = _serve_config_of(base_object("RayService"))
    local = check.load_docs(SERVE_CONFIG)[0]
    for cfg in (cluster, local):
        assert check.validate_serve_config(cfg) == []
    (capp,), (lapp,) = cluster["applications"], local["applications"]
    for key in ("name", "route_prefix", "import_path"):
        assert capp[key] == lapp[key], key
    assert set(capp["args"]) == set(lapp["args"])
    assert [d["name"] for d in capp["deployments"]] == [d["name"] for d in lapp["deployments"]] == ["LaReServer"]
    assert cluster["http_options"]["port"] == local["http_options"]["port"]
    assert local["http_options"]["host"] == "127.0.0.1" and cluster["http_options"]["host"] == "0.0.0.0"
    assert cluster["proxy_location"] == "EveryNode"


def test_mlflow_deployment_and_service():
    dep = base_object("Deployment", "mlflow")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["args"][:3] == ["server", "--host", "0.0.0.0"]  # inside the pod only; see the manifest's comment
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "lare-mlflow-db"
    svc = base_object("Service", "mlflow")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    cfg = base_object("ConfigMap", "mlflow-config")["data"]
    assert cfg["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert {"configMapRef": {"name": "mlflow-config"}} in c["envFrom"]
    # The Ray pods' tracking URI is this Service.
    uri = base_object("ConfigMap", "lare-config")["data"]["MLFLOW_TRACKING_URI"]
    assert uri == f"http://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}"
    policy = base_object("NetworkPolicy", "mlflow")
    assert policy["spec"]["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


def test_mlflow_allowed_hosts_admit_the_cluster_names_only():
    """Checked with MLflow's own Host-header matcher, against the value the Deployment gets."""
    from mlflow.server.security_utils import is_allowed_host_header

    allowed = [h.strip() for h in base_object("ConfigMap", "mlflow-config")["data"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")]
    for host in ("mlflow:5000", "mlflow", "mlflow.lare.svc:5000", "mlflow.lare-dev.svc.cluster.local:5000",
                 "localhost:5000", "127.0.0.1:5000"):
        assert is_allowed_host_header(allowed, host), host
    for host in ("evil.example.com", "mlflow.evil.com:5000", "10.0.0.1.nip.io:5000"):
        assert not is_allowed_host_header(allowed, host), host


def test_every_container_has_requests_limits_and_no_privilege_escalation():
    for f in check.resource_files(K8S):
        for doc in check.load_docs(f):
            for c in _containers(doc):
                assert c["resources"]["requests"] and c["resources"]["limits"], (f, c["name"])
                assert c["securityContext"]["allowPrivilegeEscalation"] is False, (f, c["name"])
                assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], (f, c["name"])


def test_check_cli_passes():
    import subprocess

    out = subprocess.run([sys.executable, str(K8S / "check.py")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"problems": 0' in out.stdout
