"""The Serve configs (serveConfigV2 of k8s/rayservice.yaml and deploy/serve_config.yaml): Ray's
own schema, the import path, and agreement between deployments, their resources and the worker
groups that must host them — also as Ray's KubeRay autoscaler reads the cluster spec."""

from __future__ import annotations

import math

import pytest
import yaml

from .kube import SERVE_CONFIG, custom_resources, groups, quantity, ray_container, rayservice

CONSISTENT_HASH = "ray.serve.experimental.consistent_hash_router:ConsistentHashRouter"


def configs() -> dict[str, dict]:
    return {"serveConfigV2": yaml.safe_load(rayservice()["spec"]["serveConfigV2"]),
            "deploy/serve_config.yaml": yaml.safe_load(SERVE_CONFIG.read_text())}


def built_deployments(args: dict) -> dict[str, dict]:
    """Every deployment of the app built from `args`, as `serve build` would write it."""
    from ray.serve._private.build_app import build_app as serve_build
    from ray.serve.deployment import deployment_to_schema

    from services.app import build_app

    built = serve_build(build_app(args), name="rstitch")
    return {d.name: deployment_to_schema(d).model_dump(exclude_unset=True) for d in built.deployments}


def pod_capacity(group: dict, actor: dict) -> int:
    """How many replicas with these ray_actor_options one pod of the group holds."""
    start = group["rayStartParams"]
    offered = {"CPU": float(start.get("num-cpus") or quantity(ray_container(group)["resources"]["limits"]["cpu"])),
               "GPU": float(start.get("num-gpus", 0)), **custom_resources(group)}
    wanted = {"CPU": actor.get("num_cpus", 1), "GPU": actor.get("num_gpus", 0), **actor.get("resources", {})}
    return min(math.floor(offered.get(k, 0) / v) for k, v in wanted.items() if v)


@pytest.mark.parametrize("name", ["serveConfigV2", "deploy/serve_config.yaml"])
def test_validates_with_rays_schema_and_its_import_path_imports(name):
    from ray._common.utils import import_attr
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    from services.app import GRPC_SERVICER, AppConfig

    config = configs()[name]
    schema = ServeDeploySchema.model_validate(config)
    assert schema.grpc_options.port == 9000 and schema.grpc_options.grpc_servicer_functions == [GRPC_SERVICER]
    assert callable(import_attr(GRPC_SERVICER))  # what the gRPC proxy imports
    (app,) = schema.applications
    builder = import_attr(app.import_path)
    assert callable(builder) and isinstance(builder(app.args), Application)
    AppConfig.from_args(app.args)  # no unknown or invalid arg
    for override in app.deployments or []:  # a `deployments:` override must name a real deployment
        assert override.name in built_deployments(app.args), override.name


def test_both_configs_serve_the_same_app_on_the_same_ports():
    ours, local = configs().values()
    for key in ("proxy_location", "http_options", "grpc_options"):
        assert ours[key] == local[key], key
    strip = lambda a: {k: v for k, v in a.items() if k != "args"}  # noqa: E731
    assert [strip(a) for a in ours["applications"]] == [strip(a) for a in local["applications"]]


def test_model_pair_dtype_and_tau_are_serve_args():
    (app,) = configs()["serveConfigV2"]["applications"]
    assert app["args"]["dtype"] == "auto" and 0 <= app["args"]["default_threshold"] <= 1
    # No slm/llm: the default pair baked into the image (deploy/Dockerfile) serves.
    assert "slm" not in app["args"] and "llm" not in app["args"]
    assert built_deployments({**app["args"], "slm": "/models/slm", "llm": "/models/llm"}).keys() == {
        "Frontend", "SLMWorker", "LLMWorker"}


def test_each_worker_lands_on_its_own_gpu_group():
    service = rayservice()
    (app,) = configs()["serveConfigV2"]["applications"]
    deployments = built_deployments(app["args"])
    assert deployments.keys() == {"Frontend", "SLMWorker", "LLMWorker"}
    by_group = groups(service)
    for deployment, group_name in (("SLMWorker", "slm"), ("LLMWorker", "llm")):
        actor = deployments[deployment]["ray_actor_options"]
        hosts = [g for g, spec in by_group.items() if pod_capacity(spec, actor) > 0]
        assert hosts == [group_name], f"{deployment} fits on {hosts}, expected only the {group_name} group"
        assert actor["num_gpus"] == float(by_group[group_name]["rayStartParams"]["num-gpus"]) == 1
        assert pod_capacity(by_group[group_name], actor) == 1, f"one {deployment} replica per pod"
        router = deployments[deployment]["request_router_config"]
        assert router["request_router_class"] == CONSISTENT_HASH  # session affinity
        assert router["request_router_kwargs"] == {"num_fallback_replicas": 0}
    assert pod_capacity(by_group["head"], deployments["Frontend"]["ray_actor_options"]) >= 1, "the Frontend fits the head"


def test_replica_bounds_match_the_worker_group_bounds():
    from ray.serve.config import AutoscalingConfig

    (app,) = configs()["serveConfigV2"]["applications"]
    deployments = built_deployments(app["args"])
    by_group = groups(rayservice())
    llm = deployments["LLMWorker"]
    scaling = AutoscalingConfig.model_validate(llm["autoscaling_config"])
    per_pod = pod_capacity(by_group["llm"], llm["ray_actor_options"])
    assert scaling.min_replicas < scaling.max_replicas
    # Serve asks for replicas, the Ray autoscaler adds pods for them: the bounds must agree, or
    # replicas stay pending (too few pods) or GPUs idle (too many).
    assert by_group["llm"]["minReplicas"] * per_pod == scaling.min_replicas
    assert by_group["llm"]["maxReplicas"] * per_pod == scaling.max_replicas
    slm = deployments["SLMWorker"]
    per_pod = pod_capacity(by_group["slm"], slm["ray_actor_options"])
    assert by_group["slm"]["minReplicas"] * per_pod == slm["num_replicas"]


def test_rays_autoscaler_reads_gpus_and_custom_resources_from_the_groups():
    """The KubeRay autoscaler's own reading of rayClusterConfig (ray.autoscaler._private.kuberay)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    service = rayservice()
    config = _derive_autoscaling_config_from_ray_cr(
        {"metadata": {"name": "rstitch", "namespace": "default"}, "spec": service["spec"]["rayClusterConfig"]})
    types = config["available_node_types"]
    assert types["headgroup"]["resources"].get("GPU", 0) == 0
    (app,) = configs()["serveConfigV2"]["applications"]
    for group, role in (("slm", "slm"), ("llm", "llm")):
        resources = types[group]["resources"]
        assert resources["GPU"] == 1 and resources["CPU"] == 4
        assert {k: resources[k] for k in app["args"][f"{role}_resources"]} == app["args"][f"{role}_resources"]
    assert (types["llm"]["min_workers"], types["llm"]["max_workers"]) == (1, 4)
    assert (types["slm"]["min_workers"], types["slm"]["max_workers"]) == (1, 1)


def test_the_rayservice_runs_the_ray_version_the_project_pins():
    import ray

    assert rayservice()["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__


@pytest.mark.parametrize("tau", [-0.1, 1.5, float("nan"), "0.1", True])
def test_default_threshold_is_validated(tau):
    from services.app import AppConfig

    with pytest.raises(ValueError, match=r"default_threshold must be a number in \[0, 1\], got"):
        AppConfig.from_args({"default_threshold": tau})


def test_default_threshold_reaches_the_router():
    import inspect

    from services.app import AppConfig, build_app
    from services.frontend import Frontend

    assert AppConfig().default_threshold == 0.02 and AppConfig(default_threshold=1).default_threshold == 1
    router = build_app({"default_threshold": 0.25})._bound_deployment  # bind() only: nothing loads
    bound = inspect.signature(Frontend.__init__).bind(None, *router.init_args, **router.init_kwargs)
    assert bound.arguments["default_threshold"] == 0.25


@pytest.mark.parametrize("tokens", [-1, 1.5, "8", True])
def test_shadow_prefill_tokens_is_validated(tokens):
    from services.app import AppConfig

    with pytest.raises(ValueError, match=r"shadow_prefill_tokens must be an integer >= 0 \(0: off\), got"):
        AppConfig.from_args({"shadow_prefill_tokens": tokens})


def test_shadow_prefill_tokens_reaches_the_router():
    import inspect

    from services.app import build_app
    from services.frontend import Frontend

    router = build_app({"shadow_prefill_tokens": 16})._bound_deployment
    bound = inspect.signature(Frontend.__init__).bind(None, *router.init_args, **router.init_kwargs)
    assert bound.arguments["shadow_prefill_tokens"] == 16


def test_prefill_reaches_the_workers_and_is_validated():
    from services.app import AppConfig

    assert AppConfig.from_args({"prefill": "float32:24"}).worker("llm").prefill == "float32:24"
    assert AppConfig().worker("slm").prefill == "off"  # auto is resolved by rstitch serve, not by a worker
    for bad in ("fp8", "float32:1", 32):
        with pytest.raises(ValueError, match="prefill"):
            AppConfig.from_args({"prefill": bad})
