"""`rstitch serve`: a local Ray cluster running the app; prints the gRPC and HTTP (OpenAI API)
addresses; SIGTERM or SIGINT (Ctrl-C) drains it and stops every process it started."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from rstitch_cli.common import DTYPE_CHOICES, check_llamacpp_args, pick_backend, pick_dtype
from rstitch_cli.stopping import Stopper, say
from rstitch_core.models.loading import BACKEND_CHOICES
from services.http_door import API_KEY_ENV

LOOPBACK = "127.0.0.1"
GRACE_PERIOD_S = 5.0


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the gRPC and OpenAI-compatible HTTP APIs on a local Ray cluster",
                       description="Start a local Ray cluster and the rstitch Serve app (SLM worker, "
                       "LLM worker(s), router serving gRPC and the OpenAI HTTP API). Without "
                       "--slm/--llm/--config: the embedded default pair.")
    p.add_argument("--slm", metavar="SRC", help="small model source (folder, .gguf, cached HF id)")
    p.add_argument("--llm", metavar="SRC", help="large model source")
    p.add_argument("--config", metavar="YAML", help="a Serve config (e.g. deploy/serve_config.yaml); its app "
                   "args, gRPC and HTTP ports are used, flags given here override them")
    p.add_argument("--llm-replicas", type=int, help="LLM worker replicas (default: 1)")
    p.add_argument("--router", metavar="PATH", help="R-Stitch+ router file: serves POLICY_RSTITCH_PLUS "
                   "(the SLM worker runs it)")
    p.add_argument("--shadow-prefill-tokens", type=int, metavar="N",
                   help="the LLM worker prefills the SLM's tokens in the background once N are unseen (default: 0, off)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, help="auto (the default) = llama.cpp on a "
                   "CPU when the weights are GGUF files (the embedded pair is), torch for save_pretrained folders and "
                   "on GPUs")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, help="torch backend: weights dtype; auto (the default) = the faster "
                   "decoder of this machine's saved bfloat16/float32 profiles, else bfloat16")
    p.add_argument("--prefill", metavar="auto|off|DTYPE[:N]",
                   help="passes of >= N new tokens (prompt prefills) on a copy of each model in DTYPE, e.g. float32:32 "
                   "where bf16 is emulated; auto (the default) = where this machine's saved bfloat16/float32 profiles "
                   "find it faster")
    p.add_argument("--cost-profile", metavar="auto|off|FILE",
                   help="pass costs from which speculative/verified requests that leave draft_tokens unset choose "
                   "each draft length: auto (the default) = the profile `rstitch profile` saved for this pair, "
                   "dtype and machine, measured now if there is none (about a minute on a 2-core CPU, once); "
                   "off = fixed draft limits; or a profile file")
    p.add_argument("--served-model-name", metavar="ID", help="the model id of the OpenAI API (default: SLM-LLM "
                   "from the pair's names, a valid Hugging Face repo name)")
    p.add_argument("--port", type=int, help="gRPC port (default: 9000)")
    p.add_argument("--http-port", type=int, help="HTTP port of the OpenAI-compatible API (default: 8000)")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs for the local Ray cluster")
    p.add_argument("--num-gpus", type=int, help="GPUs for the local Ray cluster (default: all visible)")
    p.add_argument("--metrics-port", type=int, default=8080,
                   help="Ray's Prometheus metrics export port on this node (default: %(default)s)")
    p.add_argument("--host", default=LOOPBACK, help="address the APIs serve: the default serves this machine "
                   "only (the HTTP API binds it; gRPC refuses other peers), 0.0.0.0 serves the network "
                   "(default: %(default)s)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require this key of every request: HTTP 'Authorization: Bearer KEY', gRPC metadata "
                   f"'authorization: Bearer KEY' (default: ${API_KEY_ENV}, else no key)")
    p.add_argument("--grace-period", type=float, default=GRACE_PERIOD_S, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, how long the requests in flight may run on before they are cut "
                   "with UNAVAILABLE; a second signal stops at once (default: %(default)s)")
    p.set_defaults(run=run)


def app_settings(args: argparse.Namespace) -> tuple[dict, int]:
    """(app args, gRPC port) from --config and the flags; ValueError for a bad config."""
    from services.app import GRPC_PORT

    app_args, port = {}, GRPC_PORT
    if args.config:
        config = _load_config(args.config)
        apps = config.get("applications") or []
        if len(apps) != 1 or apps[0].get("import_path") != "services.app:build_app":
            raise ValueError(f"--config: expected one application with import_path services.app:build_app in {args.config!r}")
        app_args = dict(apps[0].get("args") or {})
        port = (config.get("grpc_options") or {}).get("port", port)
    for flag, key in (("slm", "slm"), ("llm", "llm"), ("llm_replicas", "llm_replicas"), ("dtype", "dtype"),
                      ("backend", "backend"),
                      ("prefill", "prefill"), ("router", "router"), ("shadow_prefill_tokens", "shadow_prefill_tokens"),
                      ("cost_profile", "cost_profile"), ("served_model_name", "served_model_name")):
        if getattr(args, flag) is not None:
            app_args[key] = getattr(args, flag)
    if (app_args.get("slm") is None) != (app_args.get("llm") is None):
        raise ValueError("give both --slm and --llm (or both in the config), or neither for the default pair")
    if app_args.get("router") is not None:
        router = Path(app_args["router"]).resolve()
        if not router.is_file():
            raise ValueError(f"--router: router file {str(router)!r} does not exist")
        app_args["router"] = str(router)  # Ray's workers may run in another directory
    if app_args.get("cost_profile") not in (None, "auto", "off"):
        from rstitch_core.drafting.profile import CostProfile

        CostProfile.load(app_args["cost_profile"])  # fail now, with the file named, not in a replica
        app_args["cost_profile"] = str(Path(app_args["cost_profile"]).resolve())
    if args.port is not None:
        port = args.port
    return app_args, port


def http_port(args: argparse.Namespace) -> int:
    """The HTTP port: --http-port, else the config's http_options.port, else 8000."""
    from services.app import HTTP_PORT

    if getattr(args, "http_port", None) is not None:
        return args.http_port
    config = _load_config(args.config) if args.config else {}
    return (config.get("http_options") or {}).get("port", HTTP_PORT)


def _load_config(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"--config: cannot read {path!r}: {err}") from None


def resolve_cost_profile(app_args: dict) -> None:
    """Turn cost_profile auto (or unset) into the saved profile's path for this pair, dtype and
    machine, measuring it now if there is none; off into None. A file path is kept as it is."""
    choice = app_args.get("cost_profile") or "auto"
    if choice != "auto":
        app_args["cost_profile"] = None if choice == "off" else choice
        return
    from argparse import Namespace

    from rstitch_cli.profile import obtain
    from rstitch_core.assets import ensure_default_pair
    from rstitch_core.drafting.profile import default_path
    from rstitch_core.models.loading import resolve_dtype
    from services.app import AppConfig

    cfg = AppConfig.from_args(app_args)
    backend = cfg.backend if cfg.backend != "auto" else "torch"  # ensure_models resolved it before
    slm, llm = (cfg.slm, cfg.llm) if cfg.slm else map(str, ensure_default_pair(progress=False, backend=backend))
    device = worker_device(cfg)
    dtype = "gguf" if backend == "llamacpp" else resolve_dtype(cfg.dtype, device)
    profile = obtain(Namespace(device=device, force=False), (slm, llm, False), dtype, None, backend)
    app_args["cost_profile"] = str(default_path(profile.key))
    print(f"rstitch: cost profile {app_args['cost_profile']}", file=sys.stderr, flush=True)


def worker_device(cfg) -> str:
    """The LLM worker's device type on this machine (its "auto": a GPU if Ray gives it one)."""
    import torch

    return cfg.llm_device if cfg.llm_device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"


def ensure_models(app_args: dict) -> None:
    """Validate the app args; assemble the default pair here (with a progress bar) if it is used."""
    from services.app import AppConfig

    cfg = AppConfig.from_args(app_args)  # bad args fail here, before Ray starts
    slm, llm = cfg.slm, cfg.llm
    backend = app_args["backend"] = pick_backend(cfg.backend, slm, llm, worker_device(cfg))
    if backend == "llamacpp":
        check_llamacpp_args(cfg.dtype, cfg.prefill)
        if cfg.router is not None:
            from rstitch_core.models.llamacpp import HIDDEN_REFUSAL

            raise ValueError(f"--router: R-Stitch+ on the embedded pair or GGUF files: {HIDDEN_REFUSAL}")
    if slm is None:
        from rstitch_core.assets import INSTALL_HINT, ensure_default_pair, is_default_pair_installed

        if not is_default_pair_installed():
            raise ValueError(f"no models given and the embedded default pair is not installed: {INSTALL_HINT}")
        slm, llm = map(str, ensure_default_pair(backend=backend))
    if backend == "llamacpp":
        app_args["dtype"], app_args["prefill"] = "auto", "off"
        return
    # Resolved (auto) and checked here, where the cost profile is keyed and the choice is stated.
    dtype, prefill = pick_dtype(cfg.dtype, worker_device(cfg), slm, llm, prefill=cfg.prefill)
    app_args["dtype"], app_args["prefill"] = dtype, "off" if prefill is None else str(prefill)


@contextmanager
def local_service(app_args: dict, port: int, metrics_port: int, num_cpus: int | None, num_gpus: int | None = None,
                  http_port: int = 8000, quiet: bool = False, host: str = LOOPBACK):
    """A local Ray cluster running the app with gRPC on `host`:`port` and HTTP on `host`:`http_port`;
    shut down on exit, every process of the cluster ended. With a loopback `host` (the default)
    Ray's own ports and the metrics exporter listen on loopback too: nothing is on the network.
    `quiet` keeps the replicas' logs in Ray's log files instead of this terminal."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions

    from services import grpc_server
    from services.app import build_app

    with _ray_node_address(host):
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, _metrics_export_port=metrics_port,
                 log_to_driver=not quiet, logging_level="WARNING" if quiet else "INFO")
    grpc_actor = None
    try:
        # No gRPC options: Serve's own gRPC proxy is not started (it binds every interface and
        # fixes its limits); our server (services.grpc_server) serves gRPC on `host`.
        serve.start(http_options=HTTPOptions(host=host, port=http_port))
        serve.run(build_app(app_args), name="rstitch", route_prefix="/")
        try:
            grpc_actor, port = grpc_server.start_actor(host, port)
        except OSError as err:  # the port is taken, or the host is not this machine's
            raise ValueError(f"--port {port}: {err}") from None
        yield f"localhost:{port}" if is_loopback(host) else f"{host}:{port}"
    finally:
        say("shutting down")
        if grpc_actor is not None:
            grpc_server.stop_actor(grpc_actor)
        ray_processes = _descendants()
        serve.shutdown()
        ray.shutdown()
        _reap(ray_processes)


# Ray's mode for one machine (its default on macOS and Windows): node address 127.0.0.1. On Linux
# Ray turns a loopback node address into the machine's network address unless this is off.
SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def _ray_node_address(host: str):
    """While Ray starts: a loopback `host` makes every port of the local cluster (GCS, raylet,
    workers, agents, the metrics exporter) listen on 127.0.0.1; otherwise Ray's default, the
    machine's address, guarded by Ray's token authentication."""
    from ray._private import ray_constants

    if not is_loopback(host):
        yield
        return
    saved = os.environ.get(SINGLE_NODE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_NODE_ENV] = "0"  # Ray's processes read it at start
    # This process read it when it imported ray, which may have been before this call.
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop(SINGLE_NODE_ENV, None)
        else:
            os.environ[SINGLE_NODE_ENV] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as an IPv4-mapped address) or `localhost`."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


# ray.shutdown() stops the raylet and the GCS, but agents it started (metrics export, runtime env)
# notice only later and keep their ports for up to about a minute: an immediate restart on the same
# ports would fail. They are ours, started for this service: wait for them, then end them.
REAP_GRACE_S = 5.0


def _descendants() -> list:
    import psutil

    return psutil.Process().children(recursive=True)


def _reap(processes: list) -> None:
    """Return only once every process of the local cluster has exited, and with it every port it held."""
    import psutil

    _, alive = psutil.wait_procs(processes, timeout=REAP_GRACE_S)
    for proc in alive:
        proc.terminate()
    _, alive = psutil.wait_procs(alive, timeout=REAP_GRACE_S)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=REAP_GRACE_S)


def run(args: argparse.Namespace) -> int:
    app_args, port = app_settings(args)
    port_http = http_port(args)
    ensure_models(app_args)
    resolve_cost_profile(app_args)
    if args.api_key:
        os.environ[API_KEY_ENV] = args.api_key  # read by the front end and the gRPC server (Ray's processes)
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        # Serve's replicas take calls between deployments on every interface whatever --host says
        # (Ray 2.60), as do all of Ray's ports with a --host other than loopback: Ray's token is
        # what keeps another machine from calling the workers.
        say("warning: RAY_AUTH_MODE=disabled turns Ray's token authentication off, and Serve's replicas (with this "
            "--host, all of Ray's ports) listen on the network: any peer that reaches this machine can call them; "
            "unset it")
    stopper = Stopper()
    shown = "localhost" if is_loopback(args.host) else args.host
    with local_service(app_args, port, args.metrics_port, args.num_cpus, args.num_gpus, port_http,
                       host=args.host) as address:
        stopper.install()  # after ray.init, which installs a SIGTERM handler of its own
        address = f"{shown}:{port}"
        print(f"rstitch: serving rstitch.v1.RStitch over gRPC on {address} and the OpenAI-compatible API "
              f"on http://{shown}:{port_http}/v1 (Ctrl-C or SIGTERM stops)", flush=True)
        print(f"rstitch: Prometheus metrics (ray_rstitch_*, ray_serve_*) at http://127.0.0.1:{args.metrics_port}"
              "/metrics (scrape config: deploy/prometheus/prometheus.yml)", flush=True)
        print(f"rstitch: try: rstitch client --address {address} --prompt 'What is 17 * 23?'", flush=True)
        print(f"rstitch:  or: any OpenAI client with base_url http://{shown}:{port_http}/v1 "
              f"(model list: curl http://{shown}:{port_http}/v1/models)", flush=True)
        stopper.wait()
        drain(args.grace_period, stopper)
    say(f"stopped, every process ended, {time.monotonic() - stopper.at:.1f} s after {stopper.signal_name}")
    return 0


def drain(grace_s: float, stopper: Stopper) -> None:
    """Ask the front end to drain (services.shutdown): new requests refused, those in flight given
    `grace_s`, then cut with UNAVAILABLE."""
    from services.shutdown import drain_frontend

    try:
        done = drain_frontend(grace_s)
    except Exception as err:  # noqa: BLE001 - a front end that cannot drain is stopped all the same
        say(f"drain failed ({type(err).__name__}: {err}); stopping")
        return
    say(f"drained {time.monotonic() - stopper.at:.1f} s after {stopper.signal_name}: {done['cut']} requests "
        f"cut at the end of the {grace_s:g} s grace period")
