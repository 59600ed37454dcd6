"""The Grafana dashboard and Prometheus config: structure, and every PromQL expression on a real
Prometheus scraping a running service."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from rstitch_core import RoutingParams, SamplingParams
from services.metrics import FRONTEND_METRICS, WORKER_METRICS
from serving import free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "rstitch.json"
APP_ARGS = {"shadow_prefill_tokens": 2}  # the shadow prefill panel needs some
RAY_SERVE_METRICS = {"ray_serve_num_grpc_error_requests_total"}  # Serve's own, used by the errors panel


def expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def test_dashboard_structure():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and len(ids) >= 12
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    defined = {name for specs in (FRONTEND_METRICS, WORKER_METRICS) for n, spec in specs.items()
               for name in spec.exported(n)} | RAY_SERVE_METRICS
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\bray_[a-z_]+", target["expr"]))
            assert used and used <= defined, (panel["title"], used - defined)
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("llm token share", "switch rate", "tokens/s", "entropy", "prefill", "time to first token",
                  "inter-token", "sessions", "cached tokens", "rebuilds", "errors", "switch latency", "shadow prefill"):
        assert topic in titles, topic


def test_provisioning_and_prometheus_config_parse():
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    boards = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/rstitch.yaml").read_text())
    assert boards["providers"][0]["type"] == "file"


@pytest.fixture(scope="module")
def prometheus(service, tmp_path_factory):
    """A real Prometheus (Debian's package; scripts/test.sh installs it) scraping the service every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the prometheus binary is missing: apt-get install prometheus (scripts/test.sh does)")
    root = tmp_path_factory.mktemp("prometheus")
    target = urllib.parse.urlparse(service[2]).netloc
    (root / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": [target]}]}]}))
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=open(root / "prometheus.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail(f"prometheus did not become ready: {(root / 'prometheus.log').read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def query(url: str, expr: str) -> dict:
    params = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=10) as r:
        return json.loads(r.read())


def traffic(client) -> None:
    """Every policy, a bad request, a rebuilt session and a cancelled stream."""
    import grpc

    from serving import HOLD_PROMPT, HOLD_TOKENS, evict_llm_sessions

    for policy in ("rstitch", "llm", "slm", "speculative", "verified"):
        client.generate_result(prompt="the quick brown fox", sampling=SamplingParams(max_new_tokens=24),
                               routing=RoutingParams(policy=policy, threshold=0.5))
    # Long enough for SLM runs that start shadow prefills (the panel needs some).
    client.generate_result(prompt="Natalia sold clips to 48 of her friends", sampling=SamplingParams(max_new_tokens=80),
                           routing=RoutingParams(policy="rstitch", threshold=0.5))
    with pytest.raises(grpc.RpcError):
        list(client.generate(prompt=""))
    rebuilt = False
    for response in client.generate(prompt="the quick brown fox", sampling=SamplingParams(max_new_tokens=120),
                                    routing=RoutingParams(policy="rstitch", threshold=0.5)):
        if not rebuilt and response.WhichOneof("event") == "switch_event":
            rebuilt = evict_llm_sessions()
    # Cancelled after its first message, long before it could end.
    stream = client.generate(prompt=HOLD_PROMPT, sampling=SamplingParams(max_new_tokens=HOLD_TOKENS),
                             routing=RoutingParams(policy="rstitch", threshold=0.5))
    next(stream)
    stream.cancel()


def empty_expressions(url: str) -> list[str]:
    """The dashboard's expressions that Prometheus answers with no series (each must succeed)."""
    empty = []
    for expr in expressions():
        reply = query(url, expr.replace("$__rate_interval", "1m"))
        assert reply["status"] == "success", (expr, reply)
        if not reply["data"]["result"]:
            empty.append(expr)
    return empty


def test_every_dashboard_expression_returns_data_on_a_real_prometheus(client, prometheus):
    traffic(client)
    # Metrics land on Ray's report interval and Prometheus's scrape interval, and a rate() needs two
    # scrapes of a series: poll until every expression has data (the deadline only bounds a failure).
    deadline = time.monotonic() + 120
    while (empty := empty_expressions(prometheus)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not empty, empty
    rebuilds = query(prometheus, "sum(ray_rstitch_worker_session_rebuilds_total)")["data"]["result"]
    assert rebuilds and float(rebuilds[0]["value"][1]) >= 1
