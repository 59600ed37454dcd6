"""k8s/grafana-dashboard.yaml is scripts/k8s_dashboard.py's rendering of the Grafana dashboard."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from .kube import ROOT

spec = importlib.util.spec_from_file_location("k8s_dashboard", ROOT / "scripts" / "k8s_dashboard.py")
k8s_dashboard = importlib.util.module_from_spec(spec)
spec.loader.exec_module(k8s_dashboard)

DASHBOARD = {"title": "t", "uid": "u", "panels": [{"type": "timeseries", "title": "naïve\u2028 \"q\"\tx",
                                                  "targets": [{"expr": 'sum(rate(ray_x_total{a="b"}[5m]))'}]}]}


def configmap(text: str) -> dict:
    doc = yaml.safe_load(text)
    assert (doc["apiVersion"], doc["kind"]) == ("v1", "ConfigMap")
    assert doc["metadata"]["labels"]["grafana_dashboard"] == "1"  # a string: the sidecar's label value
    return doc


def test_rendering_round_trips_any_dashboard(tmp_path):
    source = tmp_path / "d.json"
    source.write_text(json.dumps(DASHBOARD, ensure_ascii=False))
    out = tmp_path / "cm.yaml"
    assert k8s_dashboard.main(["--dashboard", str(source), "--out", str(out)]) == 0
    doc = configmap(out.read_text())
    assert doc["metadata"]["name"] == "rstitch-grafana-dashboard"
    assert json.loads(doc["data"]["rstitch.json"]) == DASHBOARD
    assert out.read_text().isascii()
    assert k8s_dashboard.main(["--dashboard", str(source), "--out", str(out), "--check"]) == 0
    source.write_text(json.dumps({**DASHBOARD, "title": "changed"}))
    assert k8s_dashboard.main(["--dashboard", str(source), "--out", str(out), "--check"]) == 1


@pytest.mark.parametrize("text, message", [("{", "not valid JSON"), ("[]", "a `panels` list"),
                                           ('{"title": "x"}', "a `panels` list")])
def test_rendering_refuses_what_is_not_a_dashboard(text, message):
    with pytest.raises(ValueError, match=message):
        k8s_dashboard.render(text)


def test_the_committed_configmap_is_the_rendering_of_the_dashboard():
    source, committed = k8s_dashboard.DASHBOARD, k8s_dashboard.CONFIGMAP
    assert source.is_file(), f"{source} is missing: the ConfigMap is rendered from it"
    assert committed.is_file(), f"{committed} is missing: run python scripts/k8s_dashboard.py"
    assert committed.read_text() == k8s_dashboard.render(source.read_text()), (
        f"{committed} is stale: run python scripts/k8s_dashboard.py")
    doc = configmap(committed.read_text())
    assert json.loads(doc["data"]["rstitch.json"]) == json.loads(source.read_text())
    # Client-side `kubectl apply` stores the object in a 256 KiB annotation.
    assert len(committed.read_text()) < 256 * 1024, "too big for kubectl apply: use --server-side (and say so)"
