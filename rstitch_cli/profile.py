"""`rstitch profile`: time this machine's forward passes for a model pair and save its cost profile.

  rstitch profile                                     the embedded default pair (llama.cpp on a CPU)
  rstitch profile --backend torch --dtype bfloat16,float32
  rstitch profile --slm SRC --llm SRC --dtype float32
  rstitch profile --shapes qwen2.5-1.5b,qwen2.5-7b --device cuda --dtype bfloat16,float32

Without --out the profile is kept in <cache>/profiles/, keyed by the models' shapes, dtype, device
and CPU/GPU model, and reused on the next run (--force measures again). With several dtypes it
also says which one to decode in.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rstitch_cli.common import check_llamacpp_args, model_sources, pair_configs, pick_backend
from rstitch_core.models.loading import BACKEND_CHOICES

ACCEPTANCE = (0.6, 0.8, 0.9)


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="measure this machine's pass costs for a model pair (cost profile)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slm", metavar="SRC", help="small model: save_pretrained folder, .gguf file or cached HF id")
    p.add_argument("--llm", metavar="SRC", help="large model: same forms as --slm")
    p.add_argument("--shapes", metavar="SLM,LLM", help="random-weight models of built-in shapes instead "
                   "(qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b): profiles a machine without the weights")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="auto = llama.cpp on a CPU for GGUF files (the embedded pair), else torch (default: %(default)s)")
    p.add_argument("--dtype", default="auto", help="comma list of auto, float32, bfloat16, float16 "
                   "(default: %(default)s); with several, the faster one is recommended")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--out", metavar="FILE", help="write the profile here (with several dtypes: FILE's stem "
                   "+ .<dtype>.json) instead of the cache")
    p.add_argument("--force", action="store_true", help="measure even if the cache holds this profile")
    p.add_argument("--context", type=int, default=256,
                   help="cached tokens the printed summary prices passes at (default: %(default)s)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rstitch_core.drafting.profile import choose_dtype
    from rstitch_core.models.loading import parse_device, resolve_dtype

    parse_device(args.device)
    if args.context < 0:
        raise ValueError(f"--context must be >= 0, got {args.context}")
    backend = "torch" if args.shapes is not None else pick_backend(args.backend, args.slm, args.llm, args.device)
    if backend == "llamacpp":
        check_llamacpp_args(args.dtype, "off")
        dtypes = ["gguf"]
    else:  # auto: the dtype generate/serve would pick here
        dtypes = list(dict.fromkeys(resolve_dtype(d.strip(), args.device) for d in args.dtype.split(",") if d.strip()))
    if not dtypes:
        raise ValueError(f"--dtype must name at least one dtype, got {args.dtype!r}")
    pair = pair_sources(args, backend)
    profiles = [obtain(args, pair, dtype, out_path(args.out, dtype, len(dtypes)), backend) for dtype in dtypes]
    for profile in profiles:
        print(describe(profile, args.context))
    if len(profiles) > 1:
        print("\n".join(choose_dtype(profiles, context_tokens=args.context).lines))
    return 0


def pair_sources(args: argparse.Namespace, backend: str = "torch") -> tuple[str, str, bool]:
    """(slm, llm, are_shapes): --shapes names or model sources (the default pair if none given)."""
    if args.shapes is not None:
        if args.slm or args.llm:
            raise ValueError("give --shapes or --slm/--llm, not both")
        names = [s.strip() for s in args.shapes.split(",")]
        if len(names) != 2 or not all(names):
            raise ValueError(f"--shapes takes two names, SLM,LLM, got {args.shapes!r}")
        from rstitch_core.shapes import shape_config

        shape_config(names[0]), shape_config(names[1])  # unknown names fail before any work
        return names[0], names[1], True
    slm, llm = model_sources(args, backend=backend)
    return slm, llm, False


def out_path(out: str | None, dtype: str, num_dtypes: int) -> Path | None:
    if out is None or num_dtypes == 1:
        return Path(out) if out else None
    return Path(out).with_suffix(f".{dtype}.json")


def obtain(args: argparse.Namespace, pair: tuple[str, str, bool], dtype: str, out: Path | None,
           backend: str = "torch"):
    """The cached profile for this key, or a freshly measured one (saved to `out` or the cache)."""
    from rstitch_core.drafting.profile import cached_profile, default_path, gguf_key, profile_key
    from rstitch_core.drafting.profiling import profile_pair, stderr_log

    key = gguf_key(pair[0], pair[1]) if backend == "llamacpp" else profile_key(*pair_configs(pair), dtype, args.device)
    cached = None if args.force else cached_profile(key)
    if cached is not None:
        stderr_log(f"{dtype}: reusing {default_path(key)} (--force measures again)")
        if out is not None:
            cached.save(out)
        return cached
    stderr_log(f"{dtype}: building {pair[0]} and {pair[1]} on {args.device} ({key.hardware})")
    slm, llm = load_pair(pair, dtype, args.device, backend)
    profile = profile_pair(slm, llm, log=stderr_log)
    path = profile.save(out or default_path(key))
    stderr_log(f"{dtype}: wrote {path}")
    return profile


def load_pair(pair: tuple[str, str, bool], dtype: str, device: str, backend: str = "torch"):
    from rstitch_core.models.loading import load_model
    from rstitch_core.shapes import build_shape

    slm, llm, shapes = pair
    if shapes:
        return build_shape(slm, dtype, device, seed=0), build_shape(llm, dtype, device, seed=1)
    return (load_model(slm, dtype, device, "slm", backend=backend),
            load_model(llm, dtype, device, "llm", backend=backend))


def describe(profile, context: int) -> str:
    """The fitted costs a user can check, and the draft limits they lead to."""
    from rstitch_core.drafting.control import choose_draft_limit

    key, lines = profile.key, []
    lines.append(f"# {key.slm} + {key.llm}, {key.dtype} on {key.device} ({key.hardware}"
                 + (f", {key.threads} threads)" if key.threads else ")"))
    for name in ("slm", "llm"):
        m = profile.model(name)
        step = m.decode_seconds(context)
        lines.append(f"{name}: decode step {step * 1e3:.1f} ms (kv={context}); verify pass of 9 tokens "
                     f"{m.verify_seconds(9, context) / step:.2f} steps; 8 rows x 1 token "
                     f"{m.decode_seconds(context, 8) / step:.2f} steps; 256-token prefill {m.seconds(256, 0):.2f} s")
    for rows in (1, 8):
        limits = ", ".join(f"a={a}: k={choose_draft_limit(profile, a, rows, context, 16)}" for a in ACCEPTANCE)
        lines.append(f"draft limit at {rows} row(s): {limits}")
    return "\n".join(lines)
