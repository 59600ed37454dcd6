"""One real local Ray cluster per test module: the rstitch Serve app on tiny models, a real gRPC port."""

from __future__ import annotations

import os

import pytest

from serving import free_port

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file under $HOME for a test cluster
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="module")
def service(pair_dirs, router_file, request):
    """(gRPC address, app args, metrics URL, HTTP proxy URL) of a running app: SLM worker (holding
    an R-Stitch+ router), 2 LLM replicas, router; gRPC served by our server's actor as `rstitch
    serve` does. A test module can override app args with a module-level APP_ARGS dict, and replace
    build_app with its own BUILD_APP(args). Every port is a free one (Serve's defaults, 8000 and
    9000, may be taken by anything else on the machine)."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions

    from services import grpc_server
    from services.app import build_app

    port = free_port()
    args = {"slm": str(pair_dirs[0]), "llm": str(pair_dirs[1]), "dtype": "float32", "llm_replicas": 2,
            "slm_num_cpus": 0.4, "llm_num_cpus": 0.4, "threads": 1, "router": str(router_file), **getattr(request.module, "APP_ARGS", {})}
    metrics_port, http_port = free_port(), free_port()
    # Metrics reach the node's exporter on Ray's report interval (>= 1 s): keep it short.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _metrics_export_port=metrics_port,
             _system_config={"metrics_report_interval_ms": 1000})
    grpc_actor = None
    try:
        # As `rstitch serve` runs it: Serve's HTTP proxy, our gRPC server (services.grpc_server).
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=http_port))
        serve.run(getattr(request.module, "BUILD_APP", build_app)(args), name="rstitch", route_prefix="/")
        grpc_actor, _ = grpc_server.start_actor("127.0.0.1", port)
        yield f"127.0.0.1:{port}", args, f"http://127.0.0.1:{metrics_port}/metrics", f"http://127.0.0.1:{http_port}"
    finally:
        if grpc_actor is not None:
            grpc_server.stop_actor(grpc_actor)
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(service):
    from services.client import RStitchClient

    with RStitchClient(service[0]) as c:
        yield c



@pytest.fixture(scope="session")
def local_http(pair_dirs):
    """(URL, LocalFrontend): the OpenAI HTTP API over the real front end and workers in this process,
    no Ray (tests/serving.py): the fields' behaviour and the harnesses' runs take seconds, not a cluster."""
    from serving import LocalFrontend

    frontend = LocalFrontend(*map(str, pair_dirs), served_model_name="tiny-pair")
    try:
        yield frontend.serve_http(), frontend
    finally:
        frontend.close()
