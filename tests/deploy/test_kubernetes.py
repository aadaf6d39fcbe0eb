"""deploy/: `kustomize build` of each overlay, validated by kubernetes-validate; KEDA objects by KEDA's schema.

kubernetes-validate knows the built-in kinds only. ScaledObjects are checked with cloudcoil-models-keda, pydantic
models generated from KEDA's CRD OpenAPI schemas: a missing required field or a wrong type fails, and
re-serialising must give back the same document, so an unknown field (dropped by the model) fails as well.
"""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
from cloudcoil.models.keda.v1alpha1 import ScaledObject

from app.config import Settings
from app.schemas.tasks import TaskName
from app.storage.jobs import RedisJobStore
from tests.deploy.tools import REPO_ROOT, kustomize_build

KUBERNETES_VERSION = "1.32.0"
OVERLAYS = REPO_ROOT / "deploy" / "overlays"
# KEDA's redis scaler parameters (keda.sh/docs/scalers/redis-lists) that these manifests may use.
REDIS_TRIGGER_KEYS = {"address", "host", "port", "databaseIndex", "listName", "listLength", "activationListLength",
                      "enableTLS", "usernameFromEnv", "passwordFromEnv"}
NGINX_SIZE = {"k": 1024, "m": 1024**2, "g": 1024**3}


@pytest.fixture(scope="module", params=["cpu", "gpu", "cpu-rabbitmq"])
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, kustomize_build(OVERLAYS / request.param)


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def config_of(docs: list[dict]) -> dict[str, str]:
    [config] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("medimg-config")]
    return config["data"]


def containers(deployment: dict) -> list[dict]:
    return deployment["spec"]["template"]["spec"]["containers"]


def test_built_in_kinds_validate(rendered) -> None:
    _, docs = rendered
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        checked += 1
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "Ingress", "HorizontalPodAutoscaler", "StatefulSet", "Secret", "NetworkPolicy",
            "PodDisruptionBudget", "ScaledObject", "ConfigMap"} <= kinds
    assert checked == len([d for d in docs if not d["apiVersion"].startswith("keda.sh/")])


def test_scaled_objects_validate_against_keda_schema(rendered) -> None:
    _, docs = rendered
    scaled = by_kind(docs, "ScaledObject")
    assert scaled
    for name, doc in scaled.items():
        model = ScaledObject.model_validate(doc)
        assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == doc, f"{name}: unknown fields"
        for trigger in doc["spec"]["triggers"]:
            assert trigger["type"] == "redis"
            assert set(trigger["metadata"]) <= REDIS_TRIGGER_KEYS, name


def test_one_scaled_worker_per_served_task(rendered) -> None:
    _, docs = rendered
    deployments = by_kind(docs, "Deployment")
    served = {m.manifest.task for m in _served_models()}
    scaled = by_kind(docs, "ScaledObject")
    for task in served:
        worker = deployments[f"worker-{task.value}"]
        args = containers(worker)[0]["args"]
        assert args[args.index("--queues") + 1] == task.value
        trigger = scaled[f"worker-{task.value}"]["spec"]["triggers"][0]["metadata"]
        # Queued plus running jobs: the job store's per-task list, not Celery's queue list.
        assert trigger["listName"] == RedisJobStore.unfinished_list(task)
        assert scaled[f"worker-{task.value}"]["spec"]["scaleTargetRef"]["name"] == f"worker-{task.value}"
        assert scaled[f"worker-{task.value}"]["spec"]["minReplicaCount"] >= 1


def test_workers_probe_heartbeat_and_outlast_hard_time_limit(rendered) -> None:
    _, docs = rendered
    config = config_of(docs)
    settings = Settings(task_soft_time_limit=int(config["MEDIMG_TASK_SOFT_TIME_LIMIT"]),
                        task_time_limit=int(config["MEDIMG_TASK_TIME_LIMIT"]))
    assert config["MEDIMG_WORKER_HEARTBEAT_FILE"].startswith("/tmp/")
    for name, deployment in by_kind(docs, "Deployment").items():
        if not name.startswith("worker-"):
            continue
        spec = deployment["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] >= settings.task_time_limit, name
        [worker] = containers(deployment)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = worker[probe]["exec"]["command"]
            assert command[:2] == ["medimg", "worker-probe"], (name, probe)
            assert "inspect" not in command
        assert "/tmp" in {m["mountPath"] for m in worker["volumeMounts"]}  # heartbeat on a writable volume
        assert spec["securityContext"]["runAsNonRoot"] is True


def test_gpu_overlay_requests_gpus_cpu_overlay_does_not(rendered) -> None:
    overlay, docs = rendered
    for name, deployment in by_kind(docs, "Deployment").items():
        limits = containers(deployment)[0]["resources"].get("limits", {})
        wants_gpu = overlay == "gpu" and name.startswith("worker-")
        assert ("nvidia.com/gpu" in limits) == wants_gpu, name
        if wants_gpu:
            assert limits["nvidia.com/gpu"] == 1
            assert "worker-gpu" in containers(deployment)[0]["image"]


def test_ingress_body_limit_matches_max_upload_bytes(rendered) -> None:
    _, docs = rendered
    size = by_kind(docs, "Ingress")["gateway"]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", size.lower()).groups()
    assert int(number) * NGINX_SIZE.get(unit, 1) == int(config_of(docs)["MEDIMG_MAX_UPLOAD_BYTES"])


def test_redis_persistent_and_never_evicts(rendered) -> None:
    _, docs = rendered
    redis = by_kind(docs, "StatefulSet")["redis"]
    args = containers(redis)[0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis["spec"]["volumeClaimTemplates"]


def test_api_keys_come_from_a_secret(rendered) -> None:
    _, docs = rendered
    gateway = by_kind(docs, "Deployment")["gateway"]
    env = {e["name"]: e.get("value") for e in containers(gateway)[0]["env"]}
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    assert env["MEDIMG_API_KEYS_FILE"].startswith("/etc/medimg/api-keys/")
    assert volumes["api-keys"]["secret"]["secretName"] in by_kind(docs, "Secret")


def test_every_pod_covered_by_disruption_budget_and_network_policy(rendered) -> None:
    _, docs = rendered
    budgets = [d["spec"]["selector"]["matchLabels"] for d in by_kind(docs, "PodDisruptionBudget").values()]
    policies = by_kind(docs, "NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}
    for kind in ("Deployment", "StatefulSet"):
        for name, workload in by_kind(docs, kind).items():
            labels = workload["spec"]["template"]["metadata"]["labels"]
            assert any(b.items() <= labels.items() for b in budgets), name


def _served_models():
    from app.model_repository import ModelRepository

    return ModelRepository(REPO_ROOT / "models", {}, {}).served()


def test_served_tasks_known() -> None:
    assert {m.manifest.task for m in _served_models()} <= set(TaskName)


def test_workers_manifest_is_rendered_from_the_template() -> None:
    """deploy/base/workers.yaml is `medimg deploy-workers` output: one template, one block per served task."""
    from app.deploy_manifests import render_workers, served_tasks
    from app.model_repository import ModelRepository

    expected = render_workers(REPO_ROOT / "deploy" / "templates" / "worker.yaml",
                              served_tasks(ModelRepository(REPO_ROOT / "models", {}, {})))
    committed = (REPO_ROOT / "deploy" / "base" / "workers.yaml").read_text()
    assert committed == expected, ("deploy/base/workers.yaml is stale: run "
                                   "`medimg deploy-workers --repository models > deploy/base/workers.yaml`")


def test_rabbitmq_component_gives_every_deployment_the_broker_url(rendered) -> None:
    name, docs = rendered
    if name != "cpu-rabbitmq":
        pytest.skip("the RabbitMQ component is in the cpu-rabbitmq overlay only")
    assert "rabbitmq" in by_kind(docs, "StatefulSet") and "rabbitmq" in by_kind(docs, "NetworkPolicy")
    for deployment in by_kind(docs, "Deployment").values():
        sources = [ref.get("secretRef", {}).get("name") for ref in containers(deployment)[0]["envFrom"]]
        assert "medimg-broker" in sources, deployment["metadata"]["name"]
    [secret] = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "medimg-broker"]
    assert secret["metadata"]["namespace"] == "medimg"
    assert Settings(redis_url="redis://r:6379/0", broker_url=secret["stringData"]["MEDIMG_BROKER_URL"]).broker_url
