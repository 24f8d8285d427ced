"""deploy/kubernetes: every manifest valid offline, and the objects agree with each other and with raytide.

Built-in kinds are validated strictly by ``kubernetes-validate`` against the Kubernetes version below.
Custom resources (RayCluster, PodMonitor) are validated against field schemas trimmed from their published
CRDs (``crd_schemas/*.json``, each naming its source), strictly: a field the CRD does not have fails; their
pod templates are validated as core ``PodTemplate``s. Then the cross-checks an operator would otherwise find
out about on a live cluster: the ConfigMap is a valid raytide configuration whose shapes are the worker
groups (within their ``maxReplicas``, with their marker resources), the probes and the PodMonitor hit
raytide's port, raytide is not container 0, the volumes, claims and service account exist.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]  # no stubs, no py.typed
import pytest
import yaml

from autoscaler.core.config import Config, parse_config
from tests.deploy.tools import DEPLOY, REPO

KUBERNETES_VERSION = "1.37"
"""The newest Kubernetes the installed kubernetes-validate ships schemas for (pyproject pins it)."""

MANIFESTS = DEPLOY / "kubernetes"
CRD_SCHEMAS = Path(__file__).parent / "crd_schemas"
CUSTOM = {
    ("ray.io/v1", "RayCluster"): "rayclusters.ray.io-v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitors.monitoring.coreos.com-v1.json",
}
MODES = ("sidecar", "standalone")

Obj = dict[str, Any]


def _files() -> list[Path]:
    return sorted(MANIFESTS.rglob("*.yaml"))


def _load(path: Path) -> Obj:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert len(docs) == 1, f"{path}: one object per file, found {len(docs)}"
    doc: Obj = docs[0]
    return doc


def _objects(mode: str) -> dict[str, Obj]:
    """kind → the object, for one deployment mode's directory (each kind appears once there)."""
    out: dict[str, Obj] = {}
    for path in sorted((MANIFESTS / mode).glob("*.yaml")):
        obj = _load(path)
        assert obj["kind"] not in out, f"{path}: a second {obj['kind']}"
        out[obj["kind"]] = obj
    return out


def test_both_modes_exist() -> None:
    assert {p.parent.name for p in _files()} == set(MODES)


# ------------------------------------------------------------------------------------- schema validation


def _strict(schema: Any) -> Any:
    """The trimmed CRD schema with unknown fields refused (the API server prunes them silently)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        open_ended = "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in schema and not open_ended:
            out["additionalProperties"] = False
        if schema.get("x-kubernetes-int-or-string"):
            out["type"] = ["integer", "string"]
        return out
    return schema


def _pod_templates(schema: Any, value: Any, where: str = "") -> Iterator[tuple[str, Obj]]:
    """The pod templates inside a custom resource: where the trimmed schema marks a PodTemplateSpec."""
    if isinstance(schema, dict) and schema.get("x-kubernetes-type") == "io.k8s.api.core.v1.PodTemplateSpec":
        yield where, value
    elif isinstance(schema, dict) and isinstance(value, dict):
        for key, sub in value.items():
            if key in schema.get("properties", {}):
                yield from _pod_templates(schema["properties"][key], sub, f"{where}.{key}")
    elif isinstance(schema, dict) and isinstance(value, list) and "items" in schema:
        for i, sub in enumerate(value):
            yield from _pod_templates(schema["items"], sub, f"{where}[{i}]")


def _validate_custom(obj: Obj, schema_file: str) -> None:
    doc = json.loads((CRD_SCHEMAS / schema_file).read_text(encoding="utf-8"))
    assert obj["apiVersion"] == f"{doc['group']}/{doc['version']}" and obj["kind"] == doc["kind"]
    schema = _strict(doc["schema"])
    # metadata is the API server's ObjectMeta, checked below with the core schemas.
    schema["properties"]["metadata"] = {"type": "object"}
    # A pod template is checked in full as a core PodTemplate, not here.
    schema_text = json.dumps(schema).replace('"x-kubernetes-type"', '"$comment"')
    jsonschema.validate(obj, json.loads(schema_text))
    meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
    kubernetes_validate.validate(meta, KUBERNETES_VERSION, strict=True)
    for where, template in _pod_templates(doc["schema"], obj):
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "t"},
            "template": template,
        }
        try:
            kubernetes_validate.validate(pod_template, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{where}: {e.message}") from None


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_manifest_is_valid(path: Path) -> None:
    obj = _load(path)
    custom = CUSTOM.get((obj.get("apiVersion", ""), obj.get("kind", "")))
    if custom is not None:
        _validate_custom(obj, custom)
        return
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"{path}: {e.message}") from None


def test_custom_resource_schemas_name_their_source() -> None:
    for name in CUSTOM.values():
        doc = json.loads((CRD_SCHEMAS / name).read_text(encoding="utf-8"))
        assert re.search(r" @ [0-9a-f]{40} ", doc["source"]), doc["source"]


def test_strict_custom_schema_refuses_an_unknown_field() -> None:
    obj = _load(MANIFESTS / "sidecar" / "raycluster.yaml")
    obj["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3  # misspelt: pruned by the API server, unnoticed
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        _validate_custom(obj, CUSTOM[("ray.io/v1", "RayCluster")])


# ----------------------------------------------------------------------------------------- cross-checks


def _config(objects: Mapping[str, Obj]) -> Config:
    text = objects["ConfigMap"]["data"]["raytide.yaml"]
    return parse_config(text, "ConfigMap raytide-config")


def _raytide_pod(mode: str, objects: Mapping[str, Obj]) -> tuple[Obj, Obj, Obj]:
    """The pod template metadata, pod spec and container that run raytide."""
    if mode == "sidecar":
        template = objects["RayCluster"]["spec"]["headGroupSpec"]["template"]
    else:
        template = objects["Deployment"]["spec"]["template"]
    spec = template["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "raytide"]
    return template.get("metadata", {}), spec, container


@pytest.mark.parametrize("mode", MODES)
def test_configuration_matches_the_worker_groups(mode: str) -> None:
    objects = _objects(mode)
    cfg = _config(objects)
    groups = {g["groupName"]: g for g in objects["RayCluster"]["spec"]["workerGroupSpecs"]}
    assert {s.name for s in cfg.shapes} <= set(groups), "every shape is a KubeRay worker group"
    for shape in cfg.shapes:
        group = groups[shape.name]
        # Above maxReplicas the autoscaler never serves the floor (v2 drops it whole).
        assert shape.max <= group["maxReplicas"], shape.name
        if cfg.ray.floor_form == "resource":
            marker = f"raytide-node-type:{shape.name}"
            assert shape.resources.get(marker) == 1
            ray_resources = json.loads(json.loads(group["rayStartParams"]["resources"]))
            assert ray_resources.get(marker) == 1, f"{shape.name}: rayStartParams lacks {marker}"
    assert objects["RayCluster"]["spec"]["enableInTreeAutoscaling"] is True


def test_sidecar_runs_next_to_ray_with_the_local_gcs() -> None:
    objects = _objects("sidecar")
    cluster = objects["RayCluster"]
    containers = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert containers[0]["name"] != "raytide", "KubeRay treats container 0 as the Ray container"
    assert _config(objects).ray.address == "127.0.0.1:6379"
    # v2 would make the head pod restartPolicy Never: a crashed sidecar would not come back.
    assert cluster["spec"]["autoscalerOptions"]["version"] == "v1"


def test_standalone_reaches_the_head_service_alone() -> None:
    objects = _objects("standalone")
    cfg = _config(objects)
    assert cfg.ray.address == f"{objects['RayCluster']['metadata']['name']}-head-svc:6379"
    # No Ray node, so no Ray driver: neither Ray Data's coordinator nor the warm pool.
    assert cfg.ray.use_coordinator is False and not cfg.warm_pool.enabled
    assert cfg.prometheus.url, "outside the head pod the metrics come from Prometheus"
    deployment = objects["Deployment"]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"]["type"] == "Recreate"
    pod = deployment["template"]["spec"]
    assert pod["serviceAccountName"] == objects["ServiceAccount"]["metadata"]["name"]
    assert "Role" not in objects and "RoleBinding" not in objects


def _ray_version() -> str:
    found = re.search(r'"ray\[[^]]*\]==([0-9.]+)"', (REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert found
    return found.group(1)


@pytest.mark.parametrize("mode", MODES)
def test_raytide_container(mode: str) -> None:
    objects = _objects(mode)
    cfg = _config(objects)
    metadata, spec, container = _raytide_pod(mode, objects)
    cluster = objects["RayCluster"]["spec"]
    # The same Ray as the cluster's and as raytide's own pin.
    assert cluster["rayVersion"] == _ray_version()
    assert container["image"].endswith(f"-ray{cluster['rayVersion']}")
    assert container["command"][-2:] == ["--config", "/etc/raytide/raytide.yaml"]

    (port,) = container["ports"]
    assert port["containerPort"] == cfg.daemon.http_port and cfg.daemon.http_host == "0.0.0.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}

    context = {**spec.get("securityContext", {}), **container["securityContext"]}
    assert context["runAsNonRoot"] is True and context["runAsUser"] != 0
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}

    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/etc/raytide"]]["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    assert cfg.daemon.state_path is not None
    claim = volumes[mounts[str(cfg.daemon.state_path.parent)]]["persistentVolumeClaim"]["claimName"]
    assert claim == objects["PersistentVolumeClaim"]["metadata"]["name"]
    assert "emptyDir" in volumes[mounts["/tmp"]], "a writable /tmp on a read-only root"

    monitor = objects["PodMonitor"]["spec"]
    labels = metadata.get("labels", {})
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    assert [e["port"] for e in monitor["podMetricsEndpoints"]] == [port["name"]]
    assert labels[monitor["jobLabel"]] == "raytide", "the alert rules select job=raytide"

    policy = objects["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    open_to_all = [p for rule in policy["ingress"] if "from" not in rule for p in rule["ports"]]
    for p in open_to_all:
        in_range = p["port"] <= port["containerPort"] <= p.get("endPort", p["port"])
        assert not (p["protocol"] == "TCP" and in_range), "raytide's port is open to everyone"
    restricted = [rule for rule in policy["ingress"] if "from" in rule]
    assert [p["port"] for rule in restricted for p in rule["ports"]] == [port["containerPort"]]
