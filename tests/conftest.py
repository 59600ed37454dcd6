"""Shared fixtures: tiny random SLM/LLM pairs saved as folders and loaded through the real loader."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
# Tests never read or write the user's cache: a cost profile saved there would change what
# `--cost-profile auto` does (tests that need a cache set their own).
os.environ["RSTITCH_CACHE"] = tempfile.mkdtemp(prefix="rstitch-test-cache-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import build_model, build_tokenizer, save_pair  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def pair_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Independent random SLM (2 layers) and LLM (3 layers): entropies spread, switches happen."""
    return save_pair(tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="session")
def engine(pair_dirs):
    from rstitch_core import Engine

    return Engine.load(str(pair_dirs[0]), str(pair_dirs[1]), dtype="float32")


@pytest.fixture(scope="session")
def close_pair(tmp_path_factory):
    """An LLM that is a perturbed copy of the SLM: speculative drafts are partly accepted."""
    from rstitch_core import Engine, ModelRunner

    tokenizer = build_tokenizer()
    slm = build_model(len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id)
    llm = build_model(len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in llm.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.03)
    return Engine(ModelRunner(slm, tokenizer, "slm"), ModelRunner(llm, tokenizer, "llm"))


@pytest.fixture(scope="session")
def router_file(engine, tmp_path_factory) -> Path:
    """A saved (untrained, random) R-Stitch+ router for the tiny pair's SLM, tau 0.5."""
    from tiny_models import make_router

    path = tmp_path_factory.mktemp("router") / "router.safetensors"
    make_router(engine.slm, tau=0.5, seed=3).save(path)
    return path
