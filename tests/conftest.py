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


def _write_gguf_pair(root: Path, slm_model, llm_model, tokenizer) -> tuple[Path, Path]:
    from gguf_writer import write_gguf

    return write_gguf(root / "slm.gguf", slm_model, tokenizer), write_gguf(root / "llm.gguf", llm_model, tokenizer)


@pytest.fixture(scope="session")
def gguf_pair(pair_dirs, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny pair of `pair_dirs` as F32 GGUF files (the same weights, exactly)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models = [AutoModelForCausalLM.from_pretrained(d) for d in pair_dirs]
    return _write_gguf_pair(tmp_path_factory.mktemp("gguf"), *models, AutoTokenizer.from_pretrained(pair_dirs[0]))


@pytest.fixture(scope="session")
def llamacpp_engine(gguf_pair):
    """The GGUF pair on the llama.cpp backend (skipped, with the reason, where llama-cpp-python is missing)."""
    from rstitch_core.models.llamacpp import llamacpp_available

    missing = llamacpp_available()
    if missing is not None:
        pytest.skip(missing)
    from rstitch_core import Engine

    return Engine.load(*map(str, gguf_pair), backend="llamacpp")


@pytest.fixture(scope="session")
def close_gguf_pair(close_pair, tmp_path_factory) -> tuple[Path, Path]:
    """close_pair (an LLM that is a perturbed SLM: drafts are often accepted) as F32 GGUF files."""
    return _write_gguf_pair(tmp_path_factory.mktemp("close-gguf"), close_pair.slm.model, close_pair.llm.model,
                            close_pair.tokenizer)
