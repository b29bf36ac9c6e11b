"""deploy/k8s cannot be applied here (no cluster): validate every manifest against the Kubernetes schemas offline
(``kubernetes-validate`` ships them) and check the wiring the deployment depends on.

Every check is a function returning the problems it found; each one is also run on a broken copy of the manifests
(``test_a_broken_manifest_is_caught``), so none of them passes whatever the manifests say.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from api.http.routers.health import router as health_router
from api.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes still in the providers' standard support when these manifests were written; the strict
# schemas refuse unknown fields, so a misspelt key fails instead of being dropped by the API server.
K8S_VERSION = "1.31"
POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}

Doc = dict[str, Any]


def load_docs() -> list[tuple[str, Doc]]:
    """(file name, document) for every API object under deploy/k8s (kustomization.yaml is kustomize's, not one)."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


DOCS = load_docs()


def find(docs: list[Doc], kind: str, name: str) -> Doc | None:
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)


def pod_spec(doc: Doc) -> Doc:
    return doc["spec"]["template"]["spec"]


def containers(doc: Doc) -> list[Doc]:
    return list(pod_spec(doc)["containers"])


def env_of(container: Doc) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# --- the checks --------------------------------------------------------------------------------------------------


def schema_problems(docs: list[Doc]) -> list[str]:
    problems = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: schema: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: no schema: {exc.message}")
    return problems


def api_problems(docs: list[Doc]) -> list[str]:
    api = find(docs, "Deployment", "tandem-api")
    if api is None:
        return ["no tandem-api Deployment"]
    routes = {getattr(r, "path", None) for r in health_router.routes}
    c = containers(api)[0]
    problems = []
    port_names = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or path not in routes:
            problems.append(f"tandem-api {probe} must GET {path} (a route of api/http/routers/health.py)")
        if get.get("port") not in port_names:
            problems.append(f"tandem-api {probe} port {get.get('port')!r} is not a container port")
    res = c.get("resources", {})
    if "cpu" not in res.get("requests", {}) or "memory" not in res.get("limits", {}):
        problems.append("tandem-api needs CPU requests (the HPA scales on them) and a memory limit")
    if "--no-embedded-llm" not in c.get("args", []):
        problems.append("tandem-api must not start an embedded LLM worker in every replica")
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tandem-api"}
    hpa = next((h for h in hpas if h["spec"]["scaleTargetRef"] == target), None)
    if hpa is None or hpa["apiVersion"] != "autoscaling/v2":
        problems.append("no autoscaling/v2 HorizontalPodAutoscaler targets the tandem-api Deployment")
    elif not any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"].get("metrics", [])):
        problems.append("the tandem-api HPA does not scale on CPU")
    elif hpa["spec"].get("minReplicas", 1) < 2:
        problems.append("the tandem-api HPA must keep 2 replicas (one pod lost must not stop the service)")
    return problems


def qdrant_problems(docs: list[Doc]) -> list[str]:
    sts = find(docs, "StatefulSet", "qdrant")
    if sts is None:
        return ["no qdrant StatefulSet"]
    problems = []
    if sts["spec"].get("replicas") != 3:
        problems.append("the qdrant StatefulSet must have replicas: 3")
    c = containers(sts)[0]
    env = env_of(c)
    if env.get("QDRANT__CLUSTER__ENABLED") != "true":
        problems.append("qdrant must run with QDRANT__CLUSTER__ENABLED=true")
    if env.get("QDRANT__CLUSTER__P2P__PORT") != "6335" or 6335 not in {p["containerPort"] for p in c["ports"]}:
        problems.append("qdrant's p2p port 6335 must be configured and exposed")
    headless = find(docs, "Service", sts["spec"]["serviceName"])
    if headless is None or headless["spec"].get("clusterIP") != "None":
        problems.append("the qdrant StatefulSet's serviceName must be a headless Service")
    elif 6335 not in {p["port"] for p in headless["spec"]["ports"]}:
        problems.append("the headless Service must carry the p2p port")
    script = " ".join(c.get("command", []) + c.get("args", []))
    if f"--bootstrap http://qdrant-0.{sts['spec']['serviceName']}:6335" not in script.replace('"', ""):
        problems.append("qdrant peers must bootstrap from qdrant-0 through the headless Service")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problems.append("qdrant readiness must be /readyz")
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    if not any(m["name"] in claims and m["mountPath"] == "/qdrant/storage" for m in c.get("volumeMounts", [])):
        problems.append("qdrant storage must be a PersistentVolumeClaim per peer")
    return problems


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def selector_problems(docs: list[Doc]) -> list[str]:
    """Every Service and PodDisruptionBudget selects some pod template, on ports those pods have."""
    pods = [d for d in docs if d["kind"] in POD_OWNERS]
    problems = []
    for svc in (d for d in docs if d["kind"] == "Service"):
        name = svc["metadata"]["name"]
        matched = [
            p for p in pods if _selects(svc["spec"].get("selector", {}), p["spec"]["template"]["metadata"]["labels"])
        ]
        if not matched:
            problems.append(f"Service {name} selects no pod template")
            continue
        ports = {x.get("name") for p in matched for c in containers(p) for x in c.get("ports", [])}
        ports |= {x["containerPort"] for p in matched for c in containers(p) for x in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            if port.get("targetPort", port["port"]) not in ports:
                problems.append(f"Service {name} targets port {port.get('targetPort')!r}, which its pods lack")
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        labels = pdb["spec"]["selector"]["matchLabels"]
        if not any(_selects(labels, p["spec"]["template"]["metadata"]["labels"]) for p in pods):
            problems.append(f"PodDisruptionBudget {pdb['metadata']['name']} selects no pod template")
    for owner in pods:
        sel = owner["spec"].get("selector", {}).get("matchLabels")
        if sel is not None and not _selects(sel, owner["spec"]["template"]["metadata"]["labels"]):
            problems.append(f"{owner['kind']} {owner['metadata']['name']}: selector does not match its template")
    budgets = {
        tuple(sorted(p["spec"]["selector"]["matchLabels"].items())) for p in docs if p["kind"] == "PodDisruptionBudget"
    }
    for app in ("qdrant", "tandem-api"):
        if (("app.kubernetes.io/name", app),) not in budgets:
            problems.append(f"no PodDisruptionBudget for {app}")
    return problems


@contextmanager
def tandem_env(values: dict[str, str]) -> Iterator[None]:
    """The process environment as a pod given ``values`` would see it (no TANDEM_* from this machine)."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    with mock.patch.dict(os.environ, {**kept, **values}, clear=True):
        yield


def _service_ports(docs: list[Doc]) -> dict[str, set[int]]:
    return {d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]} for d in docs if d["kind"] == "Service"}


def _reaches_a_service(url: str, services: dict[str, set[int]]) -> bool:
    parts = urlsplit(url)
    return parts.hostname in services and parts.port in services[parts.hostname]


def _arg(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def config_problems(docs: list[Doc]) -> list[str]:
    """The ConfigMap the API reads is what the real Settings class accepts, and it points at the manifests' Services."""
    cm = find(docs, "ConfigMap", "tandem-config")
    api = find(docs, "Deployment", "tandem-api")
    if cm is None or api is None:
        return ["no tandem-config ConfigMap or tandem-api Deployment"]
    data: dict[str, str] = cm["data"]
    problems = []
    if {"configMapRef": {"name": "tandem-config"}} not in containers(api)[0].get("envFrom", []):
        problems.append("tandem-api does not take its environment from tandem-config")
    # A misspelt name would be ignored by Settings (extra="ignore"): every key must name a setting.
    for key in data:
        path = key.removeprefix("TANDEM_").lower().split("__")
        model: Any = Settings
        for part in path:
            fields = getattr(model, "model_fields", {})
            if part not in fields:
                problems.append(f"tandem-config key {key} is not a Tandem setting")
                break
            model = fields[part].annotation
    try:
        with tandem_env(data):
            settings = Settings(_env_file=None)  # type: ignore[call-arg]
    except (ValidationError, ValueError) as exc:
        return [*problems, f"tandem-config does not parse as Tandem's settings: {exc}"]
    services = _service_ports(docs)
    q = settings.qdrant
    if not q.url or not _reaches_a_service(q.url, services):
        problems.append(f"TANDEM_QDRANT__URL {q.url!r} is not a Service of the manifests")
    sts = find(docs, "StatefulSet", "qdrant")
    nodes = sts["spec"].get("replicas") if sts else None
    nodes = nodes if isinstance(nodes, int) else 1
    if (q.replication_factor or 1) < 2 or not q.shard_number or q.shard_number % max(nodes, 1):
        problems.append("Qdrant needs replication_factor >= 2 and shards a multiple of its nodes")
    sessions = settings.sessions.url.get_secret_value() if settings.sessions.url else ""
    redis = find(docs, "Deployment", "redis")
    if not _reaches_a_service(sessions, services) or redis is None or "redis" not in containers(redis)[0]["image"]:
        problems.append("TANDEM_SESSIONS__URL must be the manifests' Redis Service")
    workers = settings.llm.workers
    if not workers:
        problems.append("TANDEM_LLM__WORKERS lists no worker")
    for w in workers:
        if not _reaches_a_service(w.url, services):
            problems.append(f"worker {w.name} at {w.url} is not a Service of the manifests")
    # What each worker says it serves is what its pods serve.
    served: dict[str, set[str]] = {}
    for dep in (d for d in docs if d["kind"] == "Deployment"):
        c = containers(dep)[0]
        args, svc = c.get("args", []), dep["metadata"]["name"]
        if "vllm" in c["image"]:
            names = {_arg(args, "--served-model-name")} | {m.split("=")[0] for m in args if "=" in m}
            served[svc] = {n for n in names if n}
        if "ollama" in c["image"]:
            served[svc] = {env_of(c).get("OLLAMA_EXPLAINER_MODEL", "")}
    for w in workers:
        host = urlsplit(w.url).hostname or ""
        if host in served and not set(w.models) <= served[host]:
            problems.append(f"worker {w.name} lists {w.models}, its pods serve {sorted(served[host])}")
    all_models = {m for w in workers for m in w.models}
    for role, model in (("ranker", settings.llm.ranker_model), ("explainer", settings.llm.explainer_model)):
        if model not in all_models:
            problems.append(f"no worker serves the {role} model {model!r}")
    return problems


def gpu_problems(docs: list[Doc]) -> list[str]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    problems = []
    vllm = [d for d in docs if d["kind"] == "Deployment" and containers(d)[0]["image"].startswith("vllm/")]
    if len(vllm) < 2:
        problems.append("one vLLM Deployment per GPU pool (at least two pools)")
    pools = set()
    for dep in vllm:
        name, c = dep["metadata"]["name"], containers(dep)[0]
        args = c.get("args", [])
        if c["image"] != compose["vllm"]["image"]:
            problems.append(f"{name} runs {c['image']}, compose.yaml {compose['vllm']['image']}")
        if "--enable-lora" not in args or _arg(args, "--lora-modules") != "tandem-ranker=/adapters/tandem-ranker":
            problems.append(
                f"{name} must serve the LoRA ranker: --enable-lora --lora-modules tandem-ranker=/adapters/…"
            )
        if str(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")) != "1":
            problems.append(f"{name} must have an nvidia.com/gpu limit")
        selector = pod_spec(dep).get("nodeSelector")
        if not selector:
            problems.append(f"{name} must pin its GPU pool with a nodeSelector")
        pools.add(json.dumps(selector, sort_keys=True))
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        if "/adapters" not in mounts:
            problems.append(f"{name} does not mount /adapters")
        # The init container copies the adapter and the template out of the Tandem image (the Dockerfile copies the
        # repository to /app): each path it names must be in the repository.
        init = " ".join(a for ic in pod_spec(dep).get("initContainers", []) for a in ic.get("args", []))
        copied = re.findall(r"/app/([\w./-]+)", init)
        template = Path(_arg(args, "--chat-template") or "").name
        if not copied or not all((ROOT / rel).exists() for rel in copied) or f"prompts/{template}" not in copied:
            problems.append(f"{name} copies {copied} out of the image; the repository has not all of them")
    if len(pools) != len(vllm):
        problems.append("two vLLM Deployments select the same GPU pool")
    for name in ("qdrant", "ollama"):
        images = {c["image"] for d in docs if d["kind"] in POD_OWNERS for c in containers(d) if name in c["image"]}
        if images != {compose[name]["image"]}:
            problems.append(f"{name} image {sorted(images)} differs from compose.yaml's {compose[name]['image']}")
    return problems


CHECKS: list[Callable[[list[Doc]], list[str]]] = [
    schema_problems,
    api_problems,
    qdrant_problems,
    selector_problems,
    config_problems,
    gpu_problems,
]


# --- the tests ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "doc"), DOCS, ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in DOCS])
def test_every_manifest_is_valid_for_the_pinned_kubernetes(name: str, doc: Doc) -> None:
    assert schema_problems([doc]) == []


@pytest.mark.parametrize("check", CHECKS[1:], ids=lambda c: c.__name__)
def test_the_deployment_is_wired(check: Callable[[list[Doc]], list[str]]) -> None:
    assert check([d for _, d in DOCS]) == []


def test_kustomization_lists_every_manifest_and_the_readme_names_every_secret() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["namespace"] == "tandem"
    assert find([d for _, d in DOCS], "Namespace", "tandem") is not None
    secrets = set()
    for _, doc in DOCS:
        if doc["kind"] in POD_OWNERS:
            for c in containers(doc) + pod_spec(doc).get("initContainers", []):
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] == "tandem-secrets"
                        secrets.add(ref["key"])
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert {"api-keys", "qdrant-api-key"} <= secrets
    missing = [key for key in secrets if f"--from-literal={key}=" not in readme]
    assert not missing, f"deploy/README.md does not say how to set {missing}"


def _doc(docs: list[Doc], kind: str, name: str) -> Doc:
    found = find(docs, kind, name)
    assert found is not None
    return found


def _api(docs: list[Doc]) -> Doc:
    return containers(_doc(docs, "Deployment", "tandem-api"))[0]


def _qdrant(docs: list[Doc]) -> Doc:
    return containers(_doc(docs, "StatefulSet", "qdrant"))[0]


def _set_env(container: Doc, name: str, value: str) -> None:
    for e in container["env"]:
        if e["name"] == name:
            e["value"] = value


def _workers(docs: list[Doc], edit: Callable[[list[dict[str, Any]]], None]) -> None:
    data = _doc(docs, "ConfigMap", "tandem-config")["data"]
    workers = json.loads(data["TANDEM_LLM__WORKERS"])
    edit(workers)
    data["TANDEM_LLM__WORKERS"] = json.dumps(workers)


def _vllm(docs: list[Doc]) -> Doc:
    return containers(_doc(docs, "Deployment", "vllm-h100"))[0]


BROKEN: list[tuple[str, Callable[[list[Doc]], None], str]] = [
    ("misspelt field", lambda ds: _api(ds).update(imagePullPolicyy="Always"), "schema"),
    ("replicas not a number", lambda ds: _doc(ds, "StatefulSet", "qdrant")["spec"].update(replicas="three"), "schema"),
    ("container without a name", lambda ds: _api(ds).pop("name"), "schema"),
    (
        "HPA in the v2beta1 shape",
        lambda ds: _doc(ds, "HorizontalPodAutoscaler", "tandem-api")["spec"]["metrics"][0]["resource"].update(
            targetAverageUtilization=70
        ),
        "schema",
    ),
    (
        "readiness on a path the API lacks",
        lambda ds: _api(ds)["readinessProbe"]["httpGet"].update(path="/ready"),
        "readinessProbe",
    ),
    ("liveness on readiness", lambda ds: _api(ds)["livenessProbe"]["httpGet"].update(path="/readyz"), "livenessProbe"),
    ("Qdrant with one node", lambda ds: _doc(ds, "StatefulSet", "qdrant")["spec"].update(replicas=1), "replicas: 3"),
    (
        "Qdrant without cluster mode",
        lambda ds: _set_env(_qdrant(ds), "QDRANT__CLUSTER__ENABLED", "false"),
        "CLUSTER__ENABLED",
    ),
    (
        "Qdrant bootstrapping elsewhere",
        lambda ds: _qdrant(ds).update(args=[a.replace("qdrant-0.", "qdrant-1.") for a in _qdrant(ds)["args"]]),
        "bootstrap",
    ),
    (
        "HPA on another Deployment",
        lambda ds: _doc(ds, "HorizontalPodAutoscaler", "tandem-api")["spec"]["scaleTargetRef"].update(name="api"),
        "HorizontalPodAutoscaler",
    ),
    (
        "Service selector typo",
        lambda ds: _doc(ds, "Service", "redis")["spec"]["selector"].update({"app.kubernetes.io/name": "rediss"}),
        "Service redis selects no pod",
    ),
    (
        "Service on a missing port",
        lambda ds: _doc(ds, "Service", "ollama")["spec"]["ports"][0].update(targetPort="api"),
        "Service ollama targets",
    ),
    ("no PDB for the API", lambda ds: ds.remove(_doc(ds, "PodDisruptionBudget", "tandem-api")), "PodDisruptionBudget"),
    (
        "workers not JSON",
        lambda ds: _doc(ds, "ConfigMap", "tandem-config")["data"].update(TANDEM_LLM__WORKERS="[{url: x}"),
        "does not parse",
    ),
    (
        "worker without a scheme",
        lambda ds: _workers(ds, lambda ws: ws[0].update(url="vllm-h100:8000/v1")),
        "does not parse",
    ),
    (
        "worker on no Service",
        lambda ds: _workers(ds, lambda ws: ws[0].update(url="http://vllm:8000/v1")),
        "not a Service",
    ),
    (
        "worker listing a model its pods lack",
        lambda ds: _workers(ds, lambda ws: ws[0]["models"].append("tandem-x")),
        "its pods serve",
    ),
    (
        "misspelt setting",
        lambda ds: _doc(ds, "ConfigMap", "tandem-config")["data"].update(TANDEM_QDRANT__SHARDS="6"),
        "not a Tandem setting",
    ),
    (
        "write consistency above the replicas",
        lambda ds: _doc(ds, "ConfigMap", "tandem-config")["data"].update(TANDEM_QDRANT__WRITE_CONSISTENCY_FACTOR="3"),
        "does not parse",
    ),
    (
        "no replication",
        lambda ds: _doc(ds, "ConfigMap", "tandem-config")["data"].update(
            TANDEM_QDRANT__REPLICATION_FACTOR="1", TANDEM_QDRANT__WRITE_CONSISTENCY_FACTOR="1"
        ),
        "replication_factor",
    ),
    (
        "sessions on no Service",
        lambda ds: _doc(ds, "ConfigMap", "tandem-config")["data"].update(TANDEM_SESSIONS__URL="redis://cache:6379/0"),
        "TANDEM_SESSIONS__URL",
    ),
    ("vLLM without a GPU", lambda ds: _vllm(ds)["resources"]["limits"].pop("nvidia.com/gpu"), "nvidia.com/gpu"),
    (
        "vLLM without the adapter",
        lambda ds: _vllm(ds).update(args=[a for a in _vllm(ds)["args"] if a != "--enable-lora"]),
        "LoRA",
    ),
    (
        "vLLM copying an adapter the image lacks",
        lambda ds: pod_spec(_doc(ds, "Deployment", "vllm-l4"))["initContainers"][0].update(
            args=["cp -r /app/artifacts/ranker /adapters/"]
        ),
        "copies",
    ),
    ("vLLM image other than compose's", lambda ds: _vllm(ds).update(image="vllm/vllm-openai:latest"), "compose.yaml"),
]


@pytest.mark.parametrize(("mutate", "expected"), [(m, e) for _, m, e in BROKEN], ids=[n for n, _, _ in BROKEN])
def test_a_broken_manifest_is_caught(mutate: Callable[[list[Doc]], None], expected: str) -> None:
    original = [d for _, d in DOCS]
    docs = copy.deepcopy(original)
    mutate(docs)
    # The schemas are checked on the documents the mutation changed (the others pass, as tested above).
    problems = schema_problems([d for d in docs if d not in original])
    problems += [p for check in CHECKS[1:] for p in check(docs)]
    assert any(expected in p for p in problems), problems


def test_the_pinned_version_has_schemas() -> None:
    assert re.fullmatch(r"\d+\.\d+", K8S_VERSION)
    versions = kubernetes_validate.utils.all_versions()
    assert any(v.startswith(K8S_VERSION + ".") for v in versions)
