"""Arguments and model loading shared by the subcommands."""

from __future__ import annotations

import argparse
import sys

from rstitch_core import Engine
from rstitch_core.models.loading import BACKEND_CHOICES, parse_device, parse_dtype, resolve_source
from rstitch_core.models.prefill import PrefillSpec

DTYPE_CHOICES = ["auto", "float32", "bfloat16", "float16"]
DEFAULT_PAIR_AS_GGUF = ("default-slm.gguf", "default-llm.gguf")  # what the embedded pair is, for resolve_backend


def pick_backend(backend: str, slm: str | None, llm: str | None, device: str, quiet: bool = False) -> str:
    """--backend resolved for these sources (None, None: the embedded pair, GGUF files) on `device`,
    and the choice stated on stderr."""
    from rstitch_core.models.loading import resolve_backend

    sources = (slm, llm) if slm is not None else DEFAULT_PAIR_AS_GGUF
    chosen, why = resolve_backend(backend, sources, device)
    if not quiet:
        print(f"backend: {chosen} ({why}; --backend overrides)", file=sys.stderr, flush=True)
    return chosen


def check_llamacpp_args(dtype: str, prefill: str, quiet: bool = False) -> None:
    """--dtype/--prefill say how torch computes; on llama.cpp the GGUF files' own quantization does.
    Auto/off are fine and said so; an explicit dtype is refused rather than silently ignored."""
    if dtype != "auto":
        raise ValueError(f"--dtype {dtype} applies to the torch backend; the llama.cpp backend computes in the GGUF "
                         f"files' own quantization (use --backend torch to dequantize to {dtype})")
    if prefill not in ("auto", "off"):
        raise ValueError(f"--prefill {prefill} applies to the torch backend; the llama.cpp backend runs every pass "
                         f"in the GGUF files' own quantization (use --backend torch, or --prefill off)")
    if not quiet:
        print("dtype: the GGUF files' own quantization (llama.cpp backend: --dtype and --prefill do not apply)",
              file=sys.stderr, flush=True)


def pick_dtype(dtype: str, device: str, slm: str, llm: str, quiet: bool = False, prefill: str = "auto"
               ) -> tuple[str, PrefillSpec | None]:
    """--dtype and --prefill, auto resolved for this pair on `device` here and the choice stated.

    dtype auto: the profiles' choice if `rstitch profile` saved both bfloat16 and float32 ones, else
    bfloat16 (float16 on a GPU without bf16). prefill auto: a copy in the profiles' prefill dtype
    for passes from their crossover length, when they chose the decode dtype in use and found one
    (CPUs that emulate bf16); else none. Explicit values are taken as given.
    """
    from rstitch_core.models.loading import native_bf16_cpu, resolve_dtype

    chosen = resolve_dtype(dtype, device)
    measured = None if device.startswith("cuda") or "auto" not in (dtype, prefill) \
        else _measured_dtype(slm, llm, device)
    if dtype == "auto":
        if measured is not None:
            chosen, why = measured.dtype, "the faster decoder in this machine's saved profiles"
        elif device.startswith("cuda"):
            why = "this GPU's native half precision"
        elif native_bf16_cpu():
            why = "this CPU computes bf16 natively"
        else:
            why = ("this CPU emulates bf16: decoding is still faster in bf16, multi-token passes and prompt "
                   "prefill are slower; `rstitch profile --dtype bfloat16,float32` measures both and auto follows it")
        if not quiet:
            print(f"dtype: {chosen} (auto: {why}; --dtype overrides)", file=sys.stderr, flush=True)
    if prefill != "auto":
        spec, reason = PrefillSpec.parse(prefill), "--prefill"
    else:
        spec = measured.prefill if measured is not None and measured.dtype == chosen else None
        reason = "auto: faster there in this machine's saved profiles"
    if spec is not None and spec.dtype == chosen:  # caught here, before any model (or Ray) loads
        raise ValueError(f"--prefill {spec}: the models already run in {chosen}, so a {spec.dtype} copy would "
                         f"change nothing; use --prefill off or another --dtype")
    if spec is not None and not quiet:
        print(f"prefill: passes of >= {spec.min_tokens} tokens run on a {spec.dtype} copy of each model ({reason}; "
              f"it holds the weights once more; --prefill off disables)", file=sys.stderr, flush=True)
    return chosen, spec


def _measured_dtype(slm: str, llm: str, device: str):
    """choose_dtype over the saved bfloat16 and float32 profiles of this pair here, if both exist."""
    from rstitch_core.drafting.profile import cached_profile, choose_dtype, profile_key

    slm_config, llm_config = pair_configs((slm, llm, False))
    profiles = [cached_profile(profile_key(slm_config, llm_config, d, device)) for d in ("bfloat16", "float32")]
    return choose_dtype(profiles) if all(profiles) else None


def pair_configs(pair: tuple[str, str, bool]):
    """The transformers configs of a pair (slm, llm, are_shapes): built-in shape names or model sources."""
    from rstitch_core.shapes import shape_config

    slm, llm, shapes = pair
    if shapes:
        return shape_config(slm), shape_config(llm)
    from transformers import AutoConfig

    from rstitch_core.models.loading import resolve_source

    return tuple(AutoConfig.from_pretrained(folder, **kwargs) for folder, kwargs in
                 (resolve_source(slm, "slm"), resolve_source(llm, "llm")))


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (default: the embedded Qwen2.5-Coder 0.5B/1.5B pair)")
    g.add_argument("--slm", metavar="SRC", help="small model: save_pretrained folder, .gguf file or cached HF id")
    g.add_argument("--llm", metavar="SRC", help="large model: same forms as --slm")
    g.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="auto = llama.cpp on a CPU when the weights are GGUF files (the embedded pair is), torch for "
                        "save_pretrained folders and on GPUs (default: %(default)s)")
    g.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="weights dtype; auto = the faster decoder of this machine's saved bfloat16/float32 "
                        "profiles, else bfloat16 (default: %(default)s)")
    g.add_argument("--prefill", default="auto", metavar="auto|off|DTYPE[:N]",
                   help="run passes of >= N new tokens (prompt prefills) on a copy of each model in DTYPE, e.g. "
                        "float32:32 where bf16 is emulated; auto = where this machine's saved bfloat16/float32 "
                        "profiles find it faster (default: %(default)s)")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    g.add_argument("--llm-device", metavar="DEV", help="put the LLM on another device (default: --device)")
    g.add_argument("--cost-profile", default="auto", metavar="auto|off|FILE",
                   help="pass costs that choose each draft's length for speculative/verified (unless --draft-tokens "
                        "pins it): auto = the one `rstitch profile` saved for this pair, dtype and machine, if any "
                        "(default: %(default)s)")


def model_sources(args: argparse.Namespace, quiet: bool = False, backend: str = "torch") -> tuple[str, str]:
    """--slm/--llm, or the embedded default pair as `backend` runs it (GGUF files for llamacpp,
    bf16 folders for torch; assembled into the local cache on first use)."""
    if (args.slm is None) != (args.llm is None):
        raise ValueError("give both --slm and --llm, or neither to use the embedded default pair")
    if args.slm is not None:
        return args.slm, args.llm
    from rstitch_core.assets import INSTALL_HINT, ensure_default_pair, is_default_pair_installed

    if not is_default_pair_installed():
        raise ValueError(f"no --slm/--llm given and the embedded default pair is not installed: {INSTALL_HINT}")
    slm, llm = ensure_default_pair(progress=not quiet, backend=backend)
    return str(slm), str(llm)


def load_engine(args: argparse.Namespace, quiet: bool = False) -> Engine:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard bars would bury the one line that matters
    parse_device(args.device), parse_device(args.llm_device or args.device)
    if args.slm is not None or args.llm is not None:  # bad sources fail first, before anything is said or loaded
        for name, source in zip(("slm", "llm"), model_sources(args, quiet)):
            resolve_source(source, name)
    args.backend = pick_backend(getattr(args, "backend", "auto"), args.slm, args.llm, args.device, quiet)
    if args.backend == "llamacpp":
        check_llamacpp_args(args.dtype, getattr(args, "prefill", "off"), quiet)
    slm, llm = model_sources(args, quiet, args.backend)
    if args.backend == "torch":
        args.dtype, prefill = pick_dtype(args.dtype, args.device, slm, llm, quiet, getattr(args, "prefill", "off"))
        parse_dtype(args.dtype)
    else:
        args.dtype, prefill = "gguf", None
    if not quiet:
        print(f"loading slm={slm} llm={llm} ({args.backend}, {args.dtype}, {args.device})", file=sys.stderr,
              flush=True)
    engine = Engine.load(slm, llm, dtype=args.dtype, device=args.device, llm_device=args.llm_device,
                         prefill=prefill, backend=args.backend)
    use_cost_profile(engine, getattr(args, "cost_profile", "off"), quiet)
    return engine


def use_cost_profile(engine: Engine, choice: str, quiet: bool = False):
    """Give the engine cost-aware draft control from a saved profile (--cost-profile); returns it."""
    from rstitch_core.drafting.control import choose_draft_limit
    from rstitch_core.drafting.cost_aware import PROBE_RATE, cost_aware
    from rstitch_core.drafting.profile import CostProfile, cached_profile, runner_key

    if choice == "off":
        return None
    key = runner_key(engine.slm, engine.llm)
    profile = cached_profile(key) if choice == "auto" else CostProfile.load(choice, expect=key)
    engine.draft_control = cost_aware(profile)
    if not quiet:
        if profile is None:
            print("cost profile: none saved for this pair, dtype and machine (run `rstitch profile`); "
                  "drafts run to the policy's limit", file=sys.stderr, flush=True)
        else:
            pays = choose_draft_limit(profile, PROBE_RATE, 1, 256, 8) > 0
            print(f"cost profile: {key.hardware}, {key.dtype}: drafting {'can pay' if pays else 'cannot pay'} "
                  f"here{'' if pays else f' at an acceptance of {PROBE_RATE}: speculative/verified run as plain LLM decoding'}",
                  file=sys.stderr, flush=True)
    return profile
