"""Offline Kubernetes checks: the manifests in k8s/, KubeRay's CRD schemas, quantities and ports."""

from __future__ import annotations

import copy
import json
import re
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
RAYSERVICE = K8S / "rayservice.yaml"
SERVE_CONFIG = ROOT / "deploy" / "serve_config.yaml"
# KubeRay v1.7.0 CRDs, kept beside the repository (../shared/kuberay), never copied into it.
CRD_DIR = ROOT.parent / "shared" / "kuberay"
CRD_FILES = {"RayService": "ray.io_rayservices.yaml", "RayCluster": "ray.io_rayclusters.yaml"}

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # IANA_SVC_NAME, <= 15 chars
QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
SUFFIXES = {"": 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6,
            "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
            "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def load_manifests() -> dict[Path, list[dict]]:
    """Every YAML document of k8s/*.yaml, by file."""
    return {path: [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
            for path in sorted(K8S.glob("*.yaml"))}


def rayservice() -> dict:
    (doc,) = yaml.safe_load_all(RAYSERVICE.read_text())
    return doc


@lru_cache(maxsize=None)
def crd_schema(kind: str) -> dict:
    """The `v1` openAPIV3Schema of a KubeRay CRD, made strict (see `strict`)."""
    path = CRD_DIR / CRD_FILES[kind]
    if not path.is_file():
        raise FileNotFoundError(
            f"KubeRay CRD {path} is missing: the manifests are validated against the KubeRay v1.7.0 CRDs "
            f"in ../shared/kuberay/ beside the repository ({CRD_DIR}); put ray.io_rayservices.yaml and "
            "ray.io_rayclusters.yaml (ray-project/kuberay v1.7.0, ray-operator/config/crd/bases) there")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 18k lines
    assert crd["spec"]["names"]["kind"] == kind, f"{path} defines {crd['spec']['names']['kind']}, not {kind}"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return strict(version["schema"]["openAPIV3Schema"])


def strict(schema: dict) -> dict:
    """An openAPIV3Schema as plain JSON Schema, as strict as the API server with field validation:

    - `x-kubernetes-int-or-string` accepts an integer or a string;
    - an object with `properties` rejects unknown fields (the API server drops or refuses them),
      unless it says `x-kubernetes-preserve-unknown-fields`.
    """
    schema = copy.deepcopy(schema)

    def visit(node: dict) -> None:
        if node.get("x-kubernetes-int-or-string") and "anyOf" not in node and "type" not in node:
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        for child in node.get("properties", {}).values():
            visit(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                visit(node[key])
        for key in ("anyOf", "allOf", "oneOf"):
            for child in node.get(key, []):
                visit(child)

    visit(schema)
    return schema


def schema_errors(kind: str, obj: dict) -> list[str]:
    """Every violation of the CRD schema, as "path: message"."""
    import jsonschema

    validator = jsonschema.Draft4Validator(crd_schema(kind))
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(obj))


def as_raycluster(service: dict) -> dict:
    """The RayCluster that KubeRay creates from a RayService's rayClusterConfig."""
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": {"name": f"{service['metadata']['name']}-raycluster"},
            "spec": service["spec"]["rayClusterConfig"]}


def quantity(value: str | int | float) -> Decimal:
    """A Kubernetes resource quantity ("500m", "24Gi", 4) as a number; ValueError if malformed."""
    text = str(value)
    match = QUANTITY.match(text)
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    number, suffix = match.groups()
    if suffix and suffix[0] in "eE":
        return Decimal(number + suffix)
    return Decimal(number) * SUFFIXES[suffix or ""]


def groups(service: dict) -> dict[str, dict]:
    """The head group (as "head") and each worker group of a RayService, by name."""
    cluster = service["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}


def ray_container(group: dict) -> dict:
    """The Ray container: KubeRay runs Ray in the first container of the pod template."""
    return group["template"]["spec"]["containers"][0]


def custom_resources(group: dict) -> dict[str, float]:
    """rayStartParams `resources`, read the way KubeRay reads it (surrounding quotes trimmed)."""
    text = group.get("rayStartParams", {}).get("resources")
    return json.loads(text.strip("'\"` ")) if text else {}


def ports(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}
