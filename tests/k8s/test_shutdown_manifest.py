"""The RayService stops as `rstitch serve` does: the head pod's preStop drains the Frontend within
the pod's grace period, worker pods outlive that drain, and every pod's gRPC proxy refuses an
oversized message before reading it."""

from __future__ import annotations

from services.limits import MAX_REQUEST_BYTES
from services.shutdown import main as drain_main

from .kube import groups, ray_container, rayservice

RAY_STOP_MARGIN_S = 15  # ray stop and the replicas' own shutdown, after the drain


def _pods():
    return groups(rayservice())


def _pre_stop(container: dict) -> list[str]:
    return container["lifecycle"]["preStop"]["exec"]["command"]


def test_the_head_drains_the_frontend_within_its_grace_period_and_workers_outlive_the_drain():
    drains = {}
    for name, pod in _pods().items():
        command = _pre_stop(ray_container(pod))
        grace = pod["template"]["spec"]["terminationGracePeriodSeconds"]
        if name == "head":
            assert command[:3] == ["python", "-m", "services.shutdown"], command
            drains[name] = float(command[command.index("--grace-period") + 1])
            assert drains[name] + RAY_STOP_MARGIN_S <= grace, (drains[name], grace)
        else:
            assert command[0] == "sleep", command
            drains[name] = float(command[1])
            assert drains[name] < grace
    assert all(drains[n] > drains["head"] for n in drains if n != "head"), drains


def test_the_drain_hook_parses_its_arguments():
    import pytest

    with pytest.raises(SystemExit):
        drain_main(["--help"])


def test_every_pod_limits_grpc_messages_and_may_require_an_api_key():
    for name, pod in _pods().items():
        env = {e["name"]: e for e in ray_container(pod)["env"]}
        assert env["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"]["value"] == str(MAX_REQUEST_BYTES), name
        assert env["RSTITCH_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True, name
