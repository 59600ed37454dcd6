"""Load a model and its tokenizer from a local folder, a GGUF file, or a cached Hugging Face id, on
the torch backend (any source) or the llama.cpp backend (GGUF files); see resolve_backend."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rstitch_core.assets import cache_root
from rstitch_core.models.backend import BACKENDS
from rstitch_core.models.llamacpp import LlamaCppRunner, llamacpp_available
from rstitch_core.models.prefill import PrefillCopy, PrefillSpec
from rstitch_core.models.runner import ModelRunner

BACKEND_CHOICES = ("auto", *BACKENDS)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' (or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"unknown dtype {dtype!r}; accepted: {', '.join(DTYPES)}")


def resolve_dtype(dtype: str, device: str | torch.device = "cpu") -> str:
    """`dtype`, or for "auto" the default without measurements: bfloat16, or float16 on a GPU
    without bf16. Decoding is memory-bound and bf16 halves the bytes per step, even where the CPU
    only emulates bf16 arithmetic (an AVX2 EPYC: LLM decode step 310 ms in bf16, 573 ms in float32);
    there multi-token passes and prompt prefill are faster in float32, which `rstitch profile
    --dtype bfloat16,float32` measures; with both profiles saved, the CLI's auto follows their
    choice (rstitch_cli.common.pick_dtype)."""
    if dtype != "auto":
        parse_dtype(dtype)
        return dtype
    if parse_device(device).type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16"


NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def native_bf16_cpu(cpu_flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16); `cpu_flags`: /proc/cpuinfo's."""
    if cpu_flags is None:
        cpu_flags = frozenset((cpuinfo_field("flags") or "").split())
    return bool(cpu_flags & NATIVE_BF16_FLAGS)


def cpuinfo_field(name: str) -> str | None:
    """The first `name : value` of /proc/cpuinfo (e.g. "model name", "flags"); None off Linux."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def parse_device(device: str | torch.device) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N'; CUDA must be present and N in range."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; accepted: cpu, cuda, cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; accepted: cpu, cuda, cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _looks_like_path(source: str) -> bool:
    # A Hugging Face id is "name" or "org/name"; anything else shaped like a path is a path.
    return source.startswith(("/", ".", "~")) or source.endswith(".gguf") or source.count("/") > 1


def resolve_source(source: str, name: str = "model") -> tuple[str, dict]:
    """Where and how to load `source` from, without loading it: (folder or id, from_pretrained kwargs).

    Raises ValueError for a missing path, a folder without config.json, or a non-GGUF file.
    """
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"{name}: model source must be a non-empty path or Hugging Face id, got {source!r}")
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{name}: folder {str(path)!r} has no config.json (expected a save_pretrained folder)")
        return str(path), {}
    if path.exists():
        raise ValueError(f"{name}: {str(path)!r} is neither a folder nor a .gguf file")
    if _looks_like_path(source):
        raise ValueError(f"{name}: model path {source!r} does not exist")
    return source, {"local_files_only": True}


def is_gguf(source: str) -> bool:
    return isinstance(source, str) and Path(source).expanduser().suffix == ".gguf"


def resolve_backend(backend: str, sources, device: str | torch.device = "cpu") -> tuple[str, str]:
    """(backend, why) for `sources` on `device`: auto is llama.cpp on a CPU when every source is a
    GGUF file (the embedded pair is) and llama-cpp-python is installed, else torch. ValueError for
    an unknown name or a combination that cannot run (llama.cpp on CUDA, or on a non-GGUF source)."""
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {backend!r}; accepted: {', '.join(BACKEND_CHOICES)}")
    on_gpu = str(device).startswith("cuda")
    not_gguf = [s for s in sources if not is_gguf(s)]
    if backend == "llamacpp":
        if on_gpu:
            raise ValueError(f"the llama.cpp backend runs on the CPU here, not on {device!r}; GPUs use --backend torch")
        if not_gguf:
            raise ValueError(f"the llama.cpp backend runs GGUF files; {not_gguf[0]!r} is not one (use --backend torch)")
        return backend, "asked for"
    if backend == "torch":
        return backend, "asked for"
    if on_gpu:
        return "torch", "auto: GPUs run the torch backend"
    if not_gguf:
        return "torch", f"auto: {not_gguf[0]} is not a GGUF file"
    if (missing := llamacpp_available()) is not None:
        return "torch", f"auto: {missing}; GGUF weights are dequantized instead"
    return "llamacpp", "auto: GGUF weights on a CPU run in llama.cpp, in the file's own quantization"


def gguf_tokenizer(path: str | Path, name: str = "model"):
    """The Hugging Face tokenizer stored in a GGUF file, converted once and kept in the rstitch cache
    (converting a 151k-token vocabulary takes seconds; loading the saved one a fraction of that)."""
    path = Path(path).expanduser().resolve()
    stat = path.stat()
    folder = cache_root() / "tokenizers" / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    config = folder / "tokenizer_config.json"
    if config.is_file():
        return AutoTokenizer.from_pretrained(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{name}: cannot read a tokenizer from {str(path)!r}: {err}") from None
    try:
        tmp = folder.with_name(folder.name + f".{os.getpid()}.partial")
        tokenizer.save_pretrained(tmp)
        # Reloaded as its model's class (Qwen2Tokenizer, ...) a tokenizer gets that class's default
        # pre-tokenizer back, not the file's; the generic class keeps tokenizer.json exactly as converted.
        saved = json.loads((tmp / "tokenizer_config.json").read_text())
        saved["tokenizer_class"] = "PreTrainedTokenizerFast"
        (tmp / "tokenizer_config.json").write_text(json.dumps(saved, indent=1))
        os.replace(tmp, folder)
    except OSError:  # a read-only cache (or a concurrent writer) only costs the conversion next time
        pass
    return tokenizer


def load_model(source: str, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
               name: str = "model", prefill: PrefillSpec | None = None, backend: str = "torch",
               threads: int | None = None, max_sequences: int = 16, context_tokens: int | None = None):
    """Load a causal LM and its tokenizer on `backend` ("torch" or "llamacpp"; resolve "auto" first
    with resolve_backend). Returns a ModelBackend (models/backend.py).

    torch: `dtype`, `device` and `prefill` apply. llamacpp (a GGUF file): the file's own quantization,
    `threads` CPU threads (default: every core this process may use), one context for up to
    `max_sequences` sequences holding `context_tokens` positions in all (default: the model's
    context, at most 32768).
    """
    if backend == "llamacpp":
        if prefill is not None:
            raise ValueError(f"{name}: --prefill applies to the torch backend; llama.cpp runs every pass in the "
                             f"file's own quantization (use --prefill off)")
        resolve_backend(backend, [source], device)
        path = Path(source).expanduser()
        if not path.is_file():
            raise ValueError(f"{name}: model path {source!r} does not exist")
        return LlamaCppRunner(path, gguf_tokenizer(path, name), name, threads, context_tokens, max_sequences)
    if backend != "torch":
        raise ValueError(f"{name}: backend must be torch or llamacpp here (resolve auto first), got {backend!r}")
    return load_torch_model(source, dtype, device, name, prefill)


def load_torch_model(source: str, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
                     name: str = "model", prefill: PrefillSpec | None = None) -> ModelRunner:
    """Load a causal LM and the tokenizer from the same source.

    source: a `save_pretrained` folder, a `.gguf` file (dequantized to `dtype` by transformers' GGUF
    loader), or a Hugging Face id already in the local cache (never downloaded). `prefill`: also
    load a copy in its dtype for long passes (models/prefill.py; the weights' memory once more).
    Raises ValueError when the source does not exist or cannot be read as a model.
    """
    dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
    torch_dtype, dev = parse_dtype(dtype), parse_device(device)
    if prefill is not None and parse_dtype(prefill.dtype) == torch_dtype:
        raise ValueError(f"{name}: the prefill dtype {prefill.dtype} is the model's own dtype; a copy would "
                         f"change nothing (use prefill off)")
    folder, kwargs = resolve_source(source, name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **kwargs)
        copy = None if prefill is None else PrefillCopy(
            AutoModelForCausalLM.from_pretrained(folder, dtype=parse_dtype(prefill.dtype), **kwargs).to(dev).eval(),
            prefill.min_tokens)
    except OSError as err:
        if "local_files_only" in kwargs:
            raise ValueError(f"{name}: {source!r} is not a local folder, a .gguf file, or a Hugging Face "
                             f"id in the local cache (downloads are off): {err}") from None
        raise ValueError(f"{name}: cannot load a model from {source!r}: {err}") from None
    return ModelRunner(model.to(dev), tokenizer, name=name, prefill=copy)


def check_pair(slm, llm) -> None:
    """Raise ValueError unless both tokenizers map every token string to the same id and both
    models stop on the same ids (see check_tokenizers)."""
    check_tokenizers(slm.tokenizer, llm.tokenizer)
    if slm.eos_token_ids != llm.eos_token_ids:
        raise ValueError(f"incompatible models: the SLM stops on ids {sorted(slm.eos_token_ids)} "
                         f"but the LLM on {sorted(llm.eos_token_ids)}")


def check_tokenizers(slm_tokenizer, llm_tokenizer) -> None:
    """Raise ValueError unless both tokenizers map every token string to the same id and agree on EOS.

    Stitching feeds one model's token ids to the other, so any disagreement would silently corrupt
    the text; the message names the first mismatching token (in id order).
    """
    slm_vocab, llm_vocab = slm_tokenizer.get_vocab(), llm_tokenizer.get_vocab()
    if slm_vocab != llm_vocab:
        for token, slm_id in sorted(slm_vocab.items(), key=lambda kv: kv[1]):
            llm_id = llm_vocab.get(token)
            if llm_id != slm_id:
                where = "is missing from the LLM tokenizer" if llm_id is None else f"is id {llm_id} in the LLM tokenizer"
                raise ValueError(f"incompatible tokenizers: token {token!r} is id {slm_id} in the SLM tokenizer but {where}")
        token, llm_id = min(((t, i) for t, i in llm_vocab.items() if t not in slm_vocab), key=lambda kv: kv[1])
        raise ValueError(f"incompatible tokenizers: token {token!r} is id {llm_id} in the LLM tokenizer "
                         f"but is missing from the SLM tokenizer")
    if slm_tokenizer.eos_token_id != llm_tokenizer.eos_token_id:
        raise ValueError(f"incompatible tokenizers: EOS is id {slm_tokenizer.eos_token_id} "
                         f"({slm_tokenizer.eos_token!r}) in the SLM tokenizer but id "
                         f"{llm_tokenizer.eos_token_id} ({llm_tokenizer.eos_token!r}) in the LLM tokenizer")


def load_tokenizer(source: str, name: str = "model"):
    """The tokenizer alone (no weights) from any model source load_model accepts."""
    if is_gguf(source) and Path(source).expanduser().is_file():
        return gguf_tokenizer(source, name)
    folder, kwargs = resolve_source(source, name)
    try:
        return AutoTokenizer.from_pretrained(folder, **kwargs)
    except OSError as err:
        raise ValueError(f"{name}: cannot load a tokenizer from {source!r}: {err}") from None
