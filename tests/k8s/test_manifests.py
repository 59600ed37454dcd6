"""k8s/*.yaml against the KubeRay v1.7.0 CRD schemas, plus what a schema cannot see: quantities,
named ports, GPUs, custom Ray resources, labels the PodMonitor selects."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from .kube import (
    CRD_DIR,
    DNS_LABEL,
    PORT_NAME,
    RAYSERVICE,
    as_raycluster,
    crd_schema,
    custom_resources,
    groups,
    load_manifests,
    ports,
    quantity,
    ray_container,
    rayservice,
    schema_errors,
)

GRPC_PORT, HTTP_PORT, METRICS_PORT = 9000, 8000, 8080
KNOWN_KINDS = {"RayService", "PodMonitor", "ConfigMap"}


def serve_config(service: dict) -> dict:
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def test_the_kuberay_crds_are_beside_the_repository():
    for kind in ("RayService", "RayCluster"):
        assert crd_schema(kind)["properties"]["spec"]["type"] == "object", f"{CRD_DIR}: no {kind} schema"


def test_every_manifest_is_a_known_kind_with_a_valid_name():
    manifests = load_manifests()
    assert {p.name for p in manifests} >= {"rayservice.yaml", "podmonitor.yaml", "grafana-dashboard.yaml"}
    for path, docs in manifests.items():
        assert docs, f"{path} holds no document"
        for doc in docs:
            assert doc.get("kind") in KNOWN_KINDS, f"{path}: unexpected kind {doc.get('kind')!r}"
            name = doc["metadata"]["name"]
            assert DNS_LABEL.match(name) and len(name) <= 63, f"{path}: bad metadata.name {name!r}"
            for key, value in doc["metadata"].get("labels", {}).items():
                assert isinstance(value, str), f"{path}: label {key} must be a string, got {value!r}"


def test_every_rayservice_validates_against_the_crd():
    services = [d for docs in load_manifests().values() for d in docs if d["kind"] == "RayService"]
    assert services
    for service in services:
        assert service["apiVersion"] == "ray.io/v1"
        assert schema_errors("RayService", service) == []
        # KubeRay turns rayClusterConfig into a RayCluster: it must be one by that CRD too.
        assert schema_errors("RayCluster", as_raycluster(service)) == []


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s["spec"]["rayClusterConfig"]["workerGroupSpecs"][1].update(minReplica=1), "minReplica"),
    (lambda s: s["spec"]["rayClusterConfig"]["workerGroupSpecs"][1].update(maxReplicas="4"), "is not of type"),
    (lambda s: ray_container(s["spec"]["rayClusterConfig"]["headGroupSpec"])["resources"]["limits"].update(
        cpu="2 cores"), "2 cores"),
    (lambda s: s["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update({"num-gpus": 0}),
     "is not of type 'string'"),
    (lambda s: s["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].pop("groupName"), "'groupName' is a required"),
])
def test_the_schema_check_catches_mistakes(edit, expected):
    broken = copy.deepcopy(rayservice())
    edit(broken)
    assert any(expected in e for e in schema_errors("RayService", broken))


def test_pods_have_valid_resources_and_named_ports():
    for name, group in groups(rayservice()).items():
        spec = group["template"]["spec"]
        containers = spec["containers"]
        names = [c["name"] for c in containers]
        assert len(set(names)) == len(names) and all(DNS_LABEL.match(n) for n in names), name
        container = ray_container(group)
        resources = container["resources"]
        for kind in ("limits", "requests"):
            for key, value in resources[kind].items():
                quantity(value)  # ValueError if malformed
        for key in resources["limits"]:
            # Ray sizes itself from the limits; requests equal to them keep the pod Guaranteed.
            assert quantity(resources["requests"][key]) == quantity(resources["limits"][key]), (name, key)
        assert {"cpu", "memory"} <= set(resources["limits"]), f"{name}: set cpu and memory limits"
        port_list = container["ports"]
        assert all(PORT_NAME.match(p["name"]) and len(p["name"]) <= 15 for p in port_list), name
        assert len({p["name"] for p in port_list}) == len(port_list), f"{name}: duplicate port names"
        assert len({p["containerPort"] for p in port_list}) == len(port_list), f"{name}: duplicate port numbers"
        env = [e["name"] for e in container.get("env", [])]
        assert len(set(env)) == len(env), f"{name}: duplicate env names"


def test_grpc_http_and_metrics_ports_match_the_serve_config_on_every_pod():
    service = rayservice()
    config = serve_config(service)
    assert config["grpc_options"]["port"] == GRPC_PORT and config["http_options"]["port"] == HTTP_PORT
    for name, group in groups(service).items():
        named = ports(ray_container(group))
        # KubeRay >= 1.6 adds `serve` and `serve-*` container ports to the serve Service; a proxy
        # runs on every node (proxy_location: EveryNode), so every pod listens on them.
        assert named.get("serve-grpc") == GRPC_PORT, f"{name}: needs container port serve-grpc: {GRPC_PORT}"
        assert named.get("serve") == HTTP_PORT, f"{name}: needs container port serve: {HTTP_PORT}"
        assert named.get("metrics") == METRICS_PORT == int(group["rayStartParams"]["metrics-export-port"]), name
    assert config["proxy_location"] == "EveryNode"


def test_gpus_one_per_worker_pod_and_none_on_the_head():
    service = rayservice()
    images = set()
    for name, group in groups(service).items():
        container = ray_container(group)
        images.add(container["image"])
        limits = container["resources"]["limits"]
        gpus = quantity(limits.get("nvidia.com/gpu", 0))
        assert gpus == int(group["rayStartParams"]["num-gpus"]), f"{name}: nvidia.com/gpu limit != num-gpus"
        assert gpus == (0 if name == "head" else 1), f"{name}: {gpus} GPUs"
        if gpus:
            tolerated = {t.get("key") for t in group["template"]["spec"].get("tolerations", [])}
            assert "nvidia.com/gpu" in tolerated, f"{name}: GPU nodes are usually tainted nvidia.com/gpu"
    assert len(images) == 1, f"every group runs the same image, got {images}"


def test_worker_groups_offer_the_custom_resources_the_app_asks_for():
    service = rayservice()
    args = serve_config(service)["applications"][0]["args"]
    by_group = {name: custom_resources(g) for name, g in groups(service).items()}
    assert set(by_group["head"]) == set(args["frontend_resources"])  # the Frontend stays off the GPU pods
    assert by_group["slm"] == args["slm_resources"] and by_group["llm"] == args["llm_resources"]
    assert not set(args["slm_resources"]) & set(args["llm_resources"]), "each deployment needs its own resource"
    for name, group in groups(service).items():
        text = group["rayStartParams"].get("resources")
        if text:
            # Ray's autoscaler drops the first and last character and then reads JSON.
            assert json.loads(text[1:-1].replace("\\", "")) == by_group[name], name
            assert all(isinstance(v, int) for v in by_group[name].values()), f"{name}: integer resources only"


def test_llm_workers_scale_and_the_slm_group_is_fixed():
    cluster = rayservice()["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    llm, slm = groups(rayservice())["llm"], groups(rayservice())["slm"]
    assert 1 <= llm["minReplicas"] <= llm["replicas"] <= llm["maxReplicas"] and llm["minReplicas"] < llm["maxReplicas"]
    assert slm["minReplicas"] == slm["replicas"] == slm["maxReplicas"] == 1


def test_pods_carry_the_labels_the_podmonitor_selects():
    manifests = load_manifests()
    (monitor,) = [d for d in manifests[RAYSERVICE.parent / "podmonitor.yaml"] if d["kind"] == "PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel", "podTargetLabels",
                         "sampleLimit", "targetLimit"}
    selector = spec["selector"]["matchLabels"]
    assert selector and all(isinstance(v, str) for v in selector.values())
    endpoint_keys = {"port", "portNumber", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
                     "honorTimestamps", "relabelings", "metricRelabelings", "params"}
    relabel_keys = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert set(endpoint) <= endpoint_keys and endpoint["port"] == "metrics"
    for rule in endpoint.get("relabelings", []):
        assert set(rule) <= relabel_keys, rule
    for name, group in groups(rayservice()).items():
        # KubeRay adds ray.io/is-ray-node=yes to every Ray pod; the rest comes from the template.
        labels = {**group["template"]["metadata"]["labels"], "ray.io/is-ray-node": "yes"}
        assert selector.items() <= labels.items(), f"the PodMonitor does not select the {name} pods"
        assert "metrics" in ports(ray_container(group)), name
