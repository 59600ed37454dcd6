"""`rstitch generate` end to end on the tiny pair, through the installed entry point's main()."""

import json

import pytest

from rstitch_cli.main import main


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_has_the_documented_keys(pair_dirs, capsys):
    slm, llm = map(str, pair_dirs)
    code, out, _ = cli(capsys, "generate", "--slm", slm, "--llm", llm, "--prompt", "the quick brown",
                       "--max-new-tokens", "12", "--threshold", "0.5", "--dtype", "float32", "--json")
    assert code == 0
    result = json.loads(out)  # exactly one JSON object
    n = len(result["token_ids"])
    assert 1 <= n <= 12 and len(result["sources"]) == len(result["entropies"]) == n
    assert set(result["sources"]) <= {"slm", "llm"}
    assert result["finish_reason"] in {"length", "eos"}
    assert result["stats"]["slm"]["tokens"] + result["stats"]["llm"]["tokens"] == n


def test_text_mode_streams_and_ends_with_a_summary(pair_dirs, capsys):
    slm, llm = map(str, pair_dirs)
    messages = json.dumps([{"role": "user", "content": "add 2 and 3"}])
    code, out, err = cli(capsys, "generate", "--slm", slm, "--llm", llm, "--messages", messages,
                         "--max-new-tokens", "8", "--policy", "speculative", "--dtype", "float32")
    assert code == 0 and "\033[" not in out  # not a TTY: no colour codes
    assert err.strip().splitlines()[-1].startswith("[")
    assert "tokens (slm" in err and "switches slm->llm" in err


@pytest.mark.parametrize("argv, message", [
    (["--policy", "fastest"], "unknown policy 'fastest'"),
    (["--threshold", "nan"], "threshold (tau) must be a number in [0, 1], got nan"),
    (["--threshold", "-0.1"], "got -0.1"),
    (["--max-new-tokens", "0"], "max_new_tokens must be an integer >= 1, got 0"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
])
def test_bad_arguments_exit_2_with_one_line(pair_dirs, capsys, argv, message):
    slm, llm = map(str, pair_dirs)
    code, out, err = cli(capsys, "generate", "--slm", slm, "--llm", llm, "--prompt", "x", *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


@pytest.mark.parametrize("argv, message", [
    (["--prompt", ""], "prompt must be a non-empty string"),
    (["--messages", "[{"], "--messages is not valid JSON"),
    (["--messages", "[]"], "messages must be a non-empty list"),
    (["--messages", "@/no/such/file.json"], "cannot read"),
])
def test_bad_prompts_exit_2(pair_dirs, capsys, argv, message):
    slm, llm = map(str, pair_dirs)
    code, _, err = cli(capsys, "generate", "--slm", slm, "--llm", llm, *argv)
    assert code == 2 and message in err.strip().splitlines()[-1]


def test_missing_model_and_argparse_errors_are_one_line(capsys, tmp_path):
    code, _, err = cli(capsys, "generate", "--slm", str(tmp_path / "nope"), "--llm", str(tmp_path / "nope2"),
                       "--prompt", "x")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--prompt", "x", "--bogus"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == "rstitch: error: unrecognized arguments: --bogus"
    code, _, err = cli(capsys, "generate", "--slm", "a", "--prompt", "x")
    assert code == 2 and "give both --slm and --llm" in err
