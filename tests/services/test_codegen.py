"""The committed gen/ code is exactly what scripts/gen_proto.sh makes from proto/ with the pinned tools."""

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def test_regenerating_gives_the_committed_files(tmp_path):
    subprocess.run(["bash", str(ROOT / "scripts/gen_proto.sh"), str(tmp_path)], check=True,
                   env={**os.environ, "PYTHON": sys.executable}, capture_output=True)
    fresh, committed = files_under(tmp_path / "rstitch"), files_under(ROOT / "gen/rstitch")
    assert sorted(fresh) == sorted(committed)
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"gen/ is stale, run scripts/gen_proto.sh: {stale}"


def test_installed_tools_are_the_pinned_ones():
    pyproject = (ROOT / "pyproject.toml").read_text()
    for package in ("grpcio", "grpcio-tools", "protobuf"):
        pinned = re.search(rf'"{package}==([^"]+)"', pyproject)
        assert pinned, f"{package} is not pinned with == in pyproject.toml"
        assert version(package) == pinned.group(1), f"{package} {version(package)} != pinned {pinned.group(1)}"
    generated = (ROOT / "gen/rstitch/v1/rstitch_pb2_grpc.py").read_text()
    assert f"GRPC_GENERATED_VERSION = '{version('grpcio-tools')}'" in generated
