"""`rstitch client` and services.client over a real gRPC channel.

The server is the real front end (Frontend, sessions, workers) without Ray (tests/serving.py
LocalFrontend, services/local.py), so this checks the client, the CLI, the protocol and the front
end's validation end to end in seconds.
"""

import json
import socket

import grpc
import pytest

from rstitch.v1 import rstitch_pb2 as pb
from rstitch.v1 import rstitch_pb2_grpc
from rstitch_cli.main import main
from rstitch_core import RoutingParams, SamplingParams
from services.client import RStitchClient
from serving import LocalFrontend


@pytest.fixture(scope="module")
def address(pair_dirs):
    frontend = LocalFrontend(*map(str, pair_dirs))
    yield frontend.address
    frontend.close()


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def key_tree(value):
    return {k: key_tree(v) for k, v in value.items()} if isinstance(value, dict) else None


def test_json_matches_rstitch_generate(address, pair_dirs, capsys):
    request = ["--prompt", "the quick brown", "--max-new-tokens", "16", "--threshold", "0.6", "--json"]
    code, out, _ = cli(capsys, "client", "--address", address, *request)
    assert code == 0
    remote = json.loads(out)
    slm, llm = map(str, pair_dirs)
    code, out, _ = cli(capsys, "generate", "--slm", slm, "--llm", llm, "--dtype", "float32", *request)
    assert code == 0
    local = json.loads(out)
    assert key_tree(remote) == key_tree(local)  # the same keys at every level, stats included
    for key in ("text", "token_ids", "sources", "finish_reason", "switches"):
        assert remote[key] == local[key], key  # greedy: the same generation
    # The workers' batched passes round differently from the engine's at float32's last bits.
    assert remote["entropies"] == pytest.approx(local["entropies"], abs=1e-5)
    assert remote["stats"]["llm"]["tokens"] == local["stats"]["llm"]["tokens"] > 0


def test_text_mode_streams_and_ends_with_the_summary(address, engine, capsys):
    messages = json.dumps([{"role": "user", "content": "add 2 and 3"}])
    code, out, err = cli(capsys, "client", "--address", address, "--messages", messages,
                         "--max-new-tokens", "8", "--policy", "speculative", "--timeout", "30")
    assert code == 0 and "\033[" not in out  # not a TTY: no colour codes
    with RStitchClient(address) as client:
        result = client.generate_result(messages=json.loads(messages), sampling=SamplingParams(max_new_tokens=8),
                                        routing=RoutingParams(policy="speculative"))
    assert out == result["text"] + "\n"
    assert err.strip().splitlines()[-1].startswith(f"[{result['finish_reason']}] {len(result['token_ids'])} tokens")


def test_responses_echo_the_request_id(address):
    with RStitchClient(address, timeout=30) as client:
        responses = list(client.generate("the quick", sampling=SamplingParams(max_new_tokens=3), request_id="req-7"))
    assert {r.request_id for r in responses} == {"req-7"} and responses[-1].WhichOneof("event") == "finish"


@pytest.mark.parametrize("argv, message", [
    (["--prompt", ""], "INVALID_ARGUMENT: prompt must be a non-empty string, got ''"),
    (["--prompt", "word " * 600], "INVALID_ARGUMENT: the prompt has"),  # longer than the context window
])
def test_invalid_argument_exits_2_with_one_line(address, capsys, argv, message):
    code, out, err = cli(capsys, "client", "--address", address, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"rstitch client: error: {message}")


def test_server_side_validation_reaches_the_python_client(address):
    stub = rstitch_pb2_grpc.RStitchStub(grpc.insecure_channel(address))
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(pb.GenerateRequest(prompt="x", routing=pb.RoutingParams(policy=9)), timeout=30))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("routing.policy: unknown value 9; accepted:")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_exits_1_with_one_line(capsys):
    address = f"127.0.0.1:{free_port()}"
    code, out, err = cli(capsys, "client", "--address", address, "--prompt", "x", "--timeout", "10")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"rstitch client: error: UNAVAILABLE: cannot reach the server at {address}")


@pytest.mark.parametrize("argv, message", [
    (["--threshold", "nan"], "threshold (tau) must be a number in [0, 1], got nan"),
    (["--timeout", "0"], "--timeout must be a number of seconds > 0, got 0.0"),
    (["--policy", "fastest"], "unknown policy 'fastest'"),
])
def test_bad_arguments_fail_locally_with_exit_2(capsys, argv, message):
    # The address is unreachable: these must fail before any connection is tried.
    code, _, err = cli(capsys, "client", "--address", f"127.0.0.1:{free_port()}", "--prompt", "x", *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(f"rstitch client: error: {message}")
