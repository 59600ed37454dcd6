"""`rstitch serve` settings and the shipped Serve config (no cluster is started here)."""

import argparse
from pathlib import Path

import pytest
import yaml

from rstitch_cli.serve import app_settings, is_loopback

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "serve_config.yaml"


def ns(**kw):
    base = dict(slm=None, llm=None, config=None, llm_replicas=None, dtype=None, backend=None, prefill=None, port=None,
                metrics_port=8080,
                router=None, shadow_prefill_tokens=None, cost_profile=None, served_model_name=None)
    return argparse.Namespace(**{**base, **kw})


def test_flags_override_the_config():
    args, port = app_settings(ns(config=str(CONFIG), slm="a", llm="b", llm_replicas=3, port=9100))
    assert (args["slm"], args["llm"], args["llm_replicas"], port) == ("a", "b", 3, 9100)
    args, port = app_settings(ns(config=str(CONFIG)))
    assert port == 9000 and args["dtype"] == "auto" and "slm" not in args
    assert args["shadow_prefill_tokens"] == 0
    args, _ = app_settings(ns(config=str(CONFIG), shadow_prefill_tokens=16))
    assert args["shadow_prefill_tokens"] == 16


def test_a_cost_profile_is_checked_before_serving(tmp_path):
    from rstitch_core.drafting.cost import PassCost
    from rstitch_core.drafting.profile import CostProfile, ProfileKey

    with pytest.raises(ValueError, match="not a cost profile"):
        app_settings(ns(cost_profile=str(tmp_path / "missing.json")))
    path = CostProfile(ProfileKey("s", "l", "float32", "cpu", "Test CPU", 2), PassCost((0.1, 0, 0, 0, 0, 0)),
                       PassCost((0.3, 0, 0, 0, 0, 0))).save(tmp_path / "p.json")
    args, _ = app_settings(ns(cost_profile=str(path)))
    assert args["cost_profile"] == str(path.resolve())


def test_bad_settings_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="give both --slm and --llm"):
        app_settings(ns(slm="a"))
    with pytest.raises(ValueError, match="cannot read"):
        app_settings(ns(config=str(tmp_path / "missing.yaml")))
    other = tmp_path / "other.yaml"
    other.write_text("applications: [{import_path: x:y}]")
    with pytest.raises(ValueError, match="import_path services.app:build_app"):
        app_settings(ns(config=str(other)))


def test_shipped_config_validates_and_builds():
    from ray.serve.schema import ServeDeploySchema

    from services.app import GRPC_SERVICER, AppConfig, build_app

    config = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(config)
    assert schema.grpc_options.grpc_servicer_functions == [GRPC_SERVICER]
    app = schema.applications[0]
    AppConfig.from_args(app.args)
    assert build_app({**app.args, "slm": "x", "llm": "y"}) is not None  # binding loads nothing yet
    with pytest.raises(ValueError, match="unknown app args \\['bogus'\\]"):
        AppConfig.from_args({"bogus": 1})
    with pytest.raises(ValueError, match="llm_replicas must be an integer >= 1, got 0"):
        AppConfig.from_args({"llm_replicas": 0})


def test_router_flag_becomes_an_absolute_path_and_must_exist(tmp_path, monkeypatch):
    router = tmp_path / "r.safetensors"
    router.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    app_args, _ = app_settings(ns(router="r.safetensors"))
    assert app_args["router"] == str(router)
    with pytest.raises(ValueError, match="--router: router file .* does not exist"):
        app_settings(ns(router="missing.safetensors"))


def test_cost_profile_auto_measures_once_then_reuses_and_off_turns_it_off(pair_dirs, tmp_path, monkeypatch):
    from rstitch_cli.serve import resolve_cost_profile
    from rstitch_core.drafting.profile import CostProfile

    monkeypatch.setenv("RSTITCH_CACHE", str(tmp_path))
    slm, llm = map(str, pair_dirs)
    app_args = {"slm": slm, "llm": llm, "dtype": "float32"}
    resolve_cost_profile(app_args)  # no saved profile here: measured now (tiny models: quick)
    measured = Path(app_args["cost_profile"])
    assert measured.is_relative_to(tmp_path) and CostProfile.load(measured).key.dtype == "float32"
    stamp = measured.stat().st_mtime_ns
    again = {"slm": slm, "llm": llm, "dtype": "float32", "cost_profile": "auto"}
    resolve_cost_profile(again)
    assert again["cost_profile"] == str(measured) and measured.stat().st_mtime_ns == stamp  # reused
    off = {"slm": slm, "llm": llm, "cost_profile": "off"}
    resolve_cost_profile(off)
    assert off["cost_profile"] is None


def test_backend_is_resolved_before_ray_and_torch_only_settings_are_refused_on_llamacpp(
        gguf_pair, pair_dirs, router_file, capsys):
    from rstitch_cli.serve import ensure_models

    app_args, _ = app_settings(ns(slm=str(gguf_pair[0]), llm=str(gguf_pair[1])))
    ensure_models(app_args)
    assert app_args["backend"] == "llamacpp" and app_args["prefill"] == "off"
    assert "backend: llamacpp (auto: GGUF weights on a CPU" in capsys.readouterr().err
    app_args, _ = app_settings(ns(slm=str(pair_dirs[0]), llm=str(pair_dirs[1]), dtype="float32"))
    ensure_models(app_args)
    assert app_args["backend"] == "torch"
    for bad, message in (({"dtype": "bfloat16"}, "--dtype bfloat16 applies to the torch backend"),
                         ({"router": str(router_file)}, "R-Stitch.* final hidden state")):
        app_args, _ = app_settings(ns(slm=str(gguf_pair[0]), llm=str(gguf_pair[1]), **bad))
        with pytest.raises(ValueError, match=message):
            ensure_models(app_args)


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False), ("192.0.2.2", False),
    ("::ffff:192.0.2.2", False), ("example.org", False),
])
def test_only_loopback_hosts_keep_the_service_on_this_machine(host, loopback):
    assert is_loopback(host) is loopback
