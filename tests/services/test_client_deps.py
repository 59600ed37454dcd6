"""The gRPC client needs only grpcio and protobuf: it imports, and builds requests, with torch,
transformers and ray unimportable (as in `pip install --no-deps rstitch grpcio protobuf`)."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "ray")

CODE = f"""
import sys

class Unimportable:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError(f"{{name}} is not installed (test)")

sys.meta_path.insert(0, Unimportable())
from rstitch_core import Generation, RoutingParams, SamplingParams
from services.client import RStitchClient
from services.protocol import ResultBuilder, build_request

request = build_request(messages=[{{"role": "user", "content": "hi"}}], request_id="r1",
                        sampling=SamplingParams(max_new_tokens=8, temperature=0.7, seed=3),
                        routing=RoutingParams(policy="speculative", threshold=0.1, draft_tokens=4))
assert request.request_id == "r1" and request.sampling.seed == 3 and request.messages.messages[0].content == "hi"
RStitchClient("127.0.0.1:1").close()  # a channel connects lazily: nothing listens there
print(sorted({{n.split(".")[0] for n in sys.modules}} & set({HEAVY!r})))
"""


def test_client_imports_and_builds_requests_without_torch_transformers_or_ray():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


def test_the_blocker_really_blocks():
    """The check above could pass vacuously if the finder never fired: importing the core engine must fail."""
    code = CODE.split("from rstitch_core import")[0] + "import rstitch_core.engine\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "torch is not installed (test)" in out.stderr
