"""R-Stitch+ from the command line, end to end on this machine: train a pair on the arithmetic task,
profile its cost model, train a router, then generate and evaluate with `--policy rstitch+`."""

from __future__ import annotations

import json

import pytest

from rstitch_cli.main import main

PNG = b"\x89PNG\r\n\x1a\n"


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A barely trained arith pair (a few steps), its cost model and a router (1 RL step)."""
    root = tmp_path_factory.mktemp("rplus")
    assert main(["train-pair", "--out", str(root / "pair"), "--slm-steps", "3", "--llm-steps", "3"]) == 0
    pair = ["--slm", str(root / "pair" / "slm"), "--llm", str(root / "pair" / "llm"), "--dtype", "float32"]
    assert main(["router", "profile", "--out", str(root / "cost.json"), "--reps", "1", *pair]) == 0
    assert main(["router", "train", "--dataset", "arith", "--tau", "0.05", "--out", str(root / "router.safetensors"),
                 "--cost-model", str(root / "cost.json"), "--problems", "4", "--supervised-problems", "2",
                 "--supervised-epochs", "3", "--rl-steps", "1", "--rl-problems-per-step", "2", "--rl-group", "2",
                 "--max-new-tokens", "12", *pair]) == 0
    return root, pair


def test_train_pair_writes_loadable_folders_and_a_report(trained):
    root, _ = trained
    report = json.loads((root / "pair" / "pair.json").read_text())
    assert set(report["models"]) == {"slm", "llm"}
    assert report["models"]["llm"]["params"] > report["models"]["slm"]["params"]
    assert 0 <= report["models"]["slm"]["exact_match"] <= 1


def test_router_train_report(trained):
    root, _ = trained
    report = json.loads((root / "router.safetensors.json").read_text())
    assert report["task"] == "arith" and report["tau"] == 0.05
    assert report["supervised"]["decisions"] > 0 and len(report["rl"]) == 1


def test_generate_with_rstitch_plus(trained, capsys):
    root, pair = trained
    code, out, _ = cli(capsys, "generate", *pair, "--prompt", "3+4-2=?", "--policy", "rstitch+",
                       "--router", root / "router.safetensors", "--max-new-tokens", "12", "--json")
    assert code == 0 and len(json.loads(out)["token_ids"]) >= 1


@pytest.mark.parametrize("extra, message", [
    (["--policy", "rstitch+"], "--policy rstitch+ needs --router PATH"),
    (["--policy", "rstitch", "--router", "ROUTER"], "--router is only used by --policy rstitch+"),
    (["--policy", "rstitch+", "--router", "ROUTER", "--threshold", "0.1"], "threshold must be unset for policy rstitch+"),
    (["--policy", "rstitch+", "--router", "missing.safetensors"], "does not exist"),
])
def test_generate_argument_errors(trained, capsys, extra, message):
    root, pair = trained
    extra = [str(root / "router.safetensors") if a == "ROUTER" else a for a in extra]
    code, _, err = cli(capsys, "generate", *pair, "--prompt", "1+1=?", *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_router_for_another_slm_is_refused(trained, pair_dirs, capsys):
    root, _ = trained
    code, _, err = cli(capsys, "generate", "--slm", pair_dirs[0], "--llm", pair_dirs[1], "--prompt", "1+1=?",
                       "--policy", "rstitch+", "--router", root / "router.safetensors")
    assert code == 2 and "this router was trained for SLM 'slm'" in err


def test_eval_arith_compares_rstitch_plus_with_rstitch(trained, capsys):
    root, pair = trained
    out = root / "eval"
    code, stdout, _ = cli(capsys, "eval", "--dataset", "arith", *pair, "--limit", "2", "--policies",
                          "llm,rstitch,rstitch+", "--thresholds", "0.05", "--router", root / "router.safetensors",
                          "--max-new-tokens", "12", "--out", out)
    assert code == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["config"] for r in records] == ["llm", "rstitch@0.05", "rstitch+"] * 2
    plus = [r for r in records if r["config"] == "rstitch+"]
    assert all(r["policy"] == "rstitch+" and r["threshold"] == 0.05 for r in plus)
    assert "| rstitch+ |" in stdout
    assert (out / "accuracy_vs_speedup.png").read_bytes().startswith(PNG)
    assert json.loads((out / "run.json").read_text())["dataset"] == "arith"


def test_eval_rstitch_plus_needs_a_router(trained, capsys):
    root, pair = trained
    code, _, err = cli(capsys, "eval", "--dataset", "arith", *pair, "--limit", "1", "--policies", "rstitch+",
                       "--out", root / "eval2")
    assert code == 2 and "the rstitch+ policy needs a router (--router PATH)" in err
