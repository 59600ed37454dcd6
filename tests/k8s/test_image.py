"""deploy/Dockerfile, read offline (docker does not run here): CUDA base, the CUDA build of the
pinned torch before the project, every package copied, the default pair baked in."""

from __future__ import annotations

import fnmatch
import re

import pytest

from .kube import ROOT

DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M)]


def test_cuda_base_and_the_cuda_build_of_the_pinned_torch_first():
    steps = instructions()
    args = dict(a.split("=", 1) for kind, a in steps if kind == "ARG" and "=" in a)
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and steps[0] == ("ARG", f"CUDA_IMAGE={args['CUDA_IMAGE']}")
    assert f"torch=={args['TORCH_VERSION']}" in pyproject()["project"]["dependencies"]
    runs = [a for kind, a in steps if kind == "RUN"]
    torch_step = next(i for i, r in enumerate(runs) if "download.pytorch.org/whl/${TORCH_CUDA}" in r)
    project_step = next(i for i, r in enumerate(runs) if '"/src[models]"' in r)
    assert torch_step < project_step


def test_every_package_is_copied_and_none_is_ignored():
    steps = instructions()
    copied = {src for kind, a in steps if kind == "COPY" for src in a.split()[:-1]}
    setuptools = pyproject()["tool"]["setuptools"]
    for package in setuptools["packages"]:
        top = package.split(".")[0]
        source = setuptools["package-dir"].get(top, top).split("/")[0]
        assert source in copied, f"package {package} ({source}/) is not copied into the image"
    assert {"pyproject.toml", "README.md"} <= copied  # the build reads both
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for src in copied:
        assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"
        assert not any(fnmatch.fnmatch(src, pattern) for pattern in ignored), f"COPY {src} is in .dockerignore"


def test_the_default_pair_is_baked_in_and_served_offline():
    steps = instructions()
    env = " ".join(a for kind, a in steps if kind == "ENV")
    assert "RSTITCH_CACHE=/opt/rstitch-cache" in env and "HF_HUB_OFFLINE=1" in env
    assert any("ensure_default_pair" in a for kind, a in steps if kind == "RUN")
