"""rstitch against llama.cpp's own Python binding and OpenAI server, on the same GGUF files, in one run.

inprocess: LLM-only greedy decoding of the same prompt token ids (tokenized once, by the engine's
tokenizer) by rstitch's llama.cpp backend (`Engine`, policy llm) and by `llama_cpp.Llama.generate`
on the LLM file, with the same threads, both stopping at rstitch's end-of-generation ids. The two
alternate per prompt and repetition; decode tok/s = (tokens - 1) / (last token - first token), so
prompt evaluation (time to first token, reported apart) is left out of it.

served: the same OpenAI client against `python -m llama_cpp.server` (the LLM only) and `rstitch
serve` (policy llm and the default policy, verified, alternating), one server at a time. At each
concurrency level that many client threads send one untimed warm-up request, then `--requests`
chat completions back to back (greedy, `--max-new-tokens`, different prompts per stream); tok/s =
all usage.completion_tokens / wall time from the first timed start to the last finish.

    python benchmarks/peer_llamacpp.py all                  # the embedded default pair, both parts
    python benchmarks/peer_llamacpp.py inprocess --repeats 5 --max-new-tokens 128
    python benchmarks/peer_llamacpp.py served --levels 1,4,8 --requests 3 --json peer.json
    python benchmarks/peer_llamacpp.py all --slm SLM.gguf --llm LLM.gguf --threads 2

The served part needs llama.cpp's server extra: pip install "llama-cpp-python[server]" (same version).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Prompts that ask for long answers, so that few generations stop at EOS before the token budget.
PROMPTS = [
    "Write a Python class implementing an LRU cache with get, put and a docstring for every method.",
    "Explain step by step how a hash map handles collisions, with a short code example in C.",
    "Write a detailed tutorial on Python generators, with several code examples.",
    "Implement merge sort and quicksort in Python and compare their complexity in detail.",
    "Describe how TCP establishes and closes a connection, covering every packet exchanged.",
    "Write a command-line todo application in Python using argparse and a JSON file for storage.",
    "Explain the difference between processes and threads, with examples in Python and Go.",
    "Write a function that parses arithmetic expressions with a recursive descent parser, and tests.",
    "Describe how a garbage collector based on mark and sweep works, with pseudocode.",
    "Write a SQL schema for a library system and ten example queries with explanations.",
    "Explain how binary search trees are balanced by AVL rotations, with Python code.",
    "Write a small HTTP server in Python using only the standard library, and explain each part.",
]
STOP_GRACE_S = 90  # rstitch serve shuts Ray down and reaps its processes: allow it that long


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", nargs="?", choices=("inprocess", "served", "all"), default="all")
    p.add_argument("--slm"), p.add_argument("--llm")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="llama.cpp threads, both sides (default: all cores, %(default)s); rstitch serve's "
                        "workers always use all cores")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--prompts", type=int, default=4, help="inprocess: prompts (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="inprocess: runs per prompt (default: %(default)s)")
    p.add_argument("--levels", default="1,4,8", help="served: concurrency levels (default: %(default)s)")
    p.add_argument("--requests", type=int, default=3, help="served: timed requests per stream (default: %(default)s)")
    p.add_argument("--cost-profile", default="auto", help="served: rstitch serve --cost-profile (default: "
                   "%(default)s; off for GGUF files of a small context window, which auto cannot profile)")
    p.add_argument("--llama-server", metavar="BIN",
                   help="served: also measure llama.cpp's C++ server (llama-server, continuous batching over "
                        "--parallel slots), built from the same package's vendored llama.cpp: see docs/results.md")
    p.add_argument("--parallel", type=int, default=8, help="served: llama-server's slots (default: %(default)s)")
    p.add_argument("--start-timeout", type=float, default=900, help="served: seconds a server may take to start")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    args.levels = [int(v) for v in args.levels.split(",")]
    if not all(1 <= c <= len(PROMPTS) for c in args.levels):
        p.error(f"--levels must be integers in [1, {len(PROMPTS)}]")
    if (args.slm is None) != (args.llm is None):
        p.error("give both --slm and --llm, or neither for the embedded default pair")
    if args.slm is None:
        from rstitch_core.assets import ensure_default_pair

        args.slm, args.llm = map(str, ensure_default_pair(backend="llamacpp"))
    figures = {"machine": machine(args)}
    if args.part in ("inprocess", "all"):
        figures["inprocess"] = inprocess(args)
        print_inprocess(figures["inprocess"], args)
    if args.part in ("served", "all"):
        figures["served"] = served(args)
        print_served(figures["served"], args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


def machine(args) -> dict:
    import llama_cpp

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    m = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "threads": args.threads,
         "slm": Path(args.slm).name, "llm": Path(args.llm).name, "llama_cpp_python": llama_cpp.__version__,
         "max_new_tokens": args.max_new_tokens}
    print(f"CPU: {m['cpu']}, {m['cores']} cores; llama.cpp threads {m['threads']}; llama-cpp-python "
          f"{m['llama_cpp_python']}\nSLM {m['slm']}, LLM {m['llm']}; greedy, at most {m['max_new_tokens']} new tokens")
    return m


# ---- in-process ---------------------------------------------------------------------------------
def inprocess(args) -> dict:
    import llama_cpp

    from rstitch_core import Engine, RoutingParams, SamplingParams, TokenEvent
    from rstitch_core.models.loading import load_model

    # Engine.load with the threads given (it takes all cores; the loader takes a count).
    engine = Engine(*(load_model(path, name=name, backend="llamacpp", threads=args.threads)
                      for name, path in (("slm", args.slm), ("llm", args.llm))))
    peer = llama_cpp.Llama(model_path=args.llm, n_threads=args.threads, n_threads_batch=args.threads,
                           n_ctx=4096, verbose=False)
    stop_ids = engine.llm.eos_token_ids  # llama.cpp's end-of-generation set, which rstitch stops at
    routing = RoutingParams(policy="llm")

    def run_rstitch(ids: list[int], n: int) -> tuple[list[int], list[float]]:
        t0, tokens, times = time.perf_counter(), [], []
        for event in engine.generate(prompt_ids=ids, sampling=SamplingParams(max_new_tokens=n), routing=routing):
            if isinstance(event, TokenEvent):
                times.append(time.perf_counter() - t0)
                tokens.append(event.token_id)
        return tokens, times

    def run_llamacpp(ids: list[int], n: int) -> tuple[list[int], list[float]]:
        peer.reset()  # no prompt reuse from the last run: both sides evaluate the whole prompt
        t0, tokens, times = time.perf_counter(), [], []
        for token in peer.generate(ids, temp=0.0, repeat_penalty=1.0):
            if token in stop_ids:
                break
            times.append(time.perf_counter() - t0)
            tokens.append(token)
            if len(tokens) == n:
                break
        return tokens, times

    engines = {"rstitch": run_rstitch, "llamacpp": run_llamacpp}
    prompts = [engine.encode(messages=[{"role": "user", "content": text}]) for text in PROMPTS[:args.prompts]]
    for run in engines.values():  # untimed: page in the weights, build the samplers
        run(prompts[0], 4)
    runs = []
    for rep in range(args.repeats):
        for i, ids in enumerate(prompts):
            names = list(engines) if (rep + i) % 2 == 0 else list(engines)[::-1]  # neither always goes first
            row = {"prompt": i, "repeat": rep, "prompt_tokens": len(ids)}
            for name in names:
                tokens, times = engines[name](ids, args.max_new_tokens)
                row[name] = {"tokens": len(tokens), "ttft_s": times[0] if times else None,
                             "decode_tok_s": (len(tokens) - 1) / (times[-1] - times[0]) if len(tokens) > 1 else None,
                             "token_ids": tokens}
            row["identical"] = row["rstitch"]["token_ids"] == row["llamacpp"]["token_ids"]
            runs.append(row)
            print(f"prompt {i}, run {rep}: " + ", ".join(f"{n} {_f(row[n]['decode_tok_s'])} tok/s" for n in engines),
                  file=sys.stderr, flush=True)
    return {"runs": runs, "threads": args.threads, "n_ctx_llamacpp": 4096,
            "summary": {name: summary([r[name] for r in runs]) for name in engines}}


def summary(results: list[dict]) -> dict:
    rates = [r["decode_tok_s"] for r in results if r["decode_tok_s"]]
    ttfts = [r["ttft_s"] for r in results if r["ttft_s"] is not None]
    return {"decode_tok_s": _median(rates), "ttft_s": _median(ttfts), "tokens": sum(r["tokens"] for r in results)}


def print_inprocess(f: dict, args) -> None:
    print(f"\nIn-process, LLM only, {f['threads']} threads; decode tok/s = (tokens - 1) / (last - first token), "
          f"medians over {args.repeats} runs (rstitch Engine policy llm vs llama_cpp.Llama.generate, n_ctx 4096)")
    print("| prompt | prompt tokens | tokens r / l | rstitch tok/s | llama.cpp tok/s | ratio | rstitch TTFT ms "
          "| llama.cpp TTFT ms |\n|---|---|---|---|---|---|---|---|")
    for i in sorted({r["prompt"] for r in f["runs"]}):
        rows = [r for r in f["runs"] if r["prompt"] == i]
        s = {n: summary([r[n] for r in rows]) for n in ("rstitch", "llamacpp")}
        _row(i, rows[0]["prompt_tokens"], f"{s['rstitch']['tokens'] // len(rows)} / "
                                           f"{s['llamacpp']['tokens'] // len(rows)}", s["rstitch"], s["llamacpp"])
    paired = _median([r["rstitch"]["decode_tok_s"] / r["llamacpp"]["decode_tok_s"] for r in f["runs"]
                      if r["rstitch"]["decode_tok_s"] and r["llamacpp"]["decode_tok_s"]])
    _row("all", "", "", f["summary"]["rstitch"], f["summary"]["llamacpp"], f" (paired median {_f(paired, 2)}x)")
    print(f"identical greedy token ids: {sum(r['identical'] for r in f['runs'])} of {len(f['runs'])} runs")


def _row(label, prompt_tokens, tokens, r: dict, l: dict, note: str = "") -> None:  # noqa: E741
    print(f"| {label} | {prompt_tokens} | {tokens} | {_f(r['decode_tok_s'])} | {_f(l['decode_tok_s'])} | "
          f"{_ratio(r['decode_tok_s'], l['decode_tok_s'])}{note} | {_ms(r['ttft_s'])} | {_ms(l['ttft_s'])} |")


# ---- served -------------------------------------------------------------------------------------
def served(args) -> dict:
    out: dict = {"levels": args.levels, "requests": args.requests, "llamacpp": {}, "rstitch_llm": {},
                 "rstitch_default": {}}
    if args.llama_server:
        # The same settings as the Python server: all threads, greedy, 16384 positions (shared by the slots).
        port, out["llama_server"] = free_port(), {}
        cmd = [args.llama_server, "-m", args.llm, "-t", str(args.threads), "-tb", str(args.threads), "-c", "16384",
               "-np", str(args.parallel), "--host", "127.0.0.1", "--port", str(port)]
        with server(cmd, port, "llama-server", args.start_timeout) as (base, model):
            for c in args.levels:
                out["llama_server"][c] = load(base, model, c, {"repeat_penalty": 1.0}, args)
                print(f"llama-server, {c} streams: {out['llama_server'][c]['tok_s']:.1f} tok/s", file=sys.stderr)
    port = free_port()
    # --logits_all False: its default (True) projects every prompt token onto the vocabulary, which
    # only prompt logprobs need; rstitch does not do that work, so neither side does.
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", args.llm, "--n_threads", str(args.threads),
           "--n_threads_batch", str(args.threads), "--n_ctx", "16384", "--logits_all", "False",
           "--verbose", "False", "--host", "127.0.0.1", "--port", str(port)]
    with server(cmd, port, "llama_cpp.server", args.start_timeout) as (base, model):
        # repeat_penalty 1.0: the server's default is 1.1, which is not plain greedy decoding.
        for c in args.levels:
            out["llamacpp"][c] = load(base, model, c, {"repeat_penalty": 1.0}, args)
            print(f"llama_cpp.server, {c} streams: {out['llamacpp'][c]['tok_s']:.1f} tok/s", file=sys.stderr)
    ports = [free_port() for _ in range(3)]
    rstitch = str(Path(sys.executable).with_name("rstitch"))
    cmd = [rstitch, "serve", "--slm", args.slm, "--llm", args.llm, "--port", str(ports[0]), "--http-port",
           str(ports[1]), "--metrics-port", str(ports[2]), "--cost-profile", args.cost_profile]
    with server(cmd, ports[1], "rstitch serve", args.start_timeout) as (base, model):
        for i, c in enumerate(args.levels):
            order = [("rstitch_llm", {"rstitch": {"policy": "llm"}}), ("rstitch_default", None)]
            for key, body in order if i % 2 == 0 else order[::-1]:  # alternate which policy runs first
                out[key][c] = load(base, model, c, body, args)
                print(f"rstitch serve {key[8:]}, {c} streams: {out[key][c]['tok_s']:.1f} tok/s", file=sys.stderr)
    return out


def load(base: str, model: str, concurrency: int, extra_body: dict | None, args) -> dict:
    """`concurrency` threads: one warm-up request each, then `--requests` timed ones back to back."""
    import openai

    barrier, results, errors = threading.Barrier(concurrency + 1), [None] * concurrency, []

    def stream(i: int) -> None:
        try:
            client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=3600)
            prompts = [PROMPTS[(i + j) % len(PROMPTS)] for j in range(args.requests + 1)]  # distinct at each step
            ask = lambda text: client.chat.completions.create(  # noqa: E731
                model=model, messages=[{"role": "user", "content": text}], max_tokens=args.max_new_tokens,
                temperature=0, extra_body=extra_body)
            ask(prompts[-1])  # untimed warm-up (connections, and the load the timed requests meet)
            barrier.wait()
            tokens, prompt_tokens, latencies = 0, 0, []
            for text in prompts[:-1]:
                t = time.perf_counter()
                usage = ask(text).usage
                latencies.append(time.perf_counter() - t)
                tokens, prompt_tokens = tokens + usage.completion_tokens, prompt_tokens + usage.prompt_tokens
            results[i] = {"tokens": tokens, "prompt_tokens": prompt_tokens, "latencies": latencies,
                          "end": time.perf_counter()}
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    with suppress(threading.BrokenBarrierError):  # a stream failed: its error is raised below
        barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"a request to {base} failed: {errors[0]!r}") from errors[0]
    wall = max(r["end"] for r in results) - t0
    tokens = sum(r["tokens"] for r in results)
    return {"tokens": tokens, "prompt_tokens": sum(r["prompt_tokens"] for r in results), "wall_s": wall,
            "tok_s": tokens / wall, "p50_latency_s": statistics.median(x for r in results for x in r["latencies"])}


@contextmanager
def server(cmd: list[str], port: int, name: str, timeout: float):
    """Start a server in its own session, wait for GET /v1/models; yield (base URL, model id); stop
    it and every process it started."""
    log = tempfile.NamedTemporaryFile("w+", prefix="peer-llamacpp-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    print(f"starting {name} (log: {log.name})", file=sys.stderr, flush=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{_tail(log.name)}")
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=5) as r:
                    model = json.load(r)["data"][0]["id"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not answer in {timeout:.0f} s:\n{_tail(log.name)}") from None
                time.sleep(1)
        yield base, model
    finally:
        stop(proc, name)
        log.close()


def stop(proc: subprocess.Popen, name: str) -> None:
    """SIGINT (Ctrl-C) to the server's main process only: rstitch serve then stops Serve and Ray and
    reaps their processes itself (a signal to its whole group would kill Ray under it first), uvicorn
    exits. Not SIGTERM: rstitch serve's driver then aborts 3 s into its shutdown (Ray's failure
    signal handler), leaving Ray agents behind. Whatever of its tree is still there is killed."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in {STOP_GRACE_S} s: killing it", file=sys.stderr)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _, alive = psutil.wait_procs(family, timeout=10)
    for p in alive:  # skipped: zombies (init reaps them) and processes gone meanwhile
        with suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE:
                print(f"{name}: killing leftover process {p.pid} ({' '.join(p.cmdline()[:2])[:80]})", file=sys.stderr)
                p.kill()
    psutil.wait_procs(alive, timeout=10)


def print_served(f: dict, args) -> None:
    print(f"\nServed, OpenAI chat completions, {args.requests} timed requests per stream after one warm-up, "
          f"aggregate completion tok/s; llama_cpp.server: n_ctx 16384, logits_all False, repeat_penalty 1.0; "
          f"rstitch serve: cost profile {args.cost_profile}, all cores per worker")
    print("| streams | llama.cpp server | rstitch llm | rstitch default | default / llama.cpp | llm / llama.cpp "
          "| default / llm |\n|---|---|---|---|---|---|---|")
    for c in f["levels"]:
        lc, rl, rd = (f[k][c]["tok_s"] for k in ("llamacpp", "rstitch_llm", "rstitch_default"))
        print(f"| {c} | {lc:.1f} | {rl:.1f} | {rd:.1f} | {rd / lc:.2f}x | {rl / lc:.2f}x | {rd / rl:.2f}x |")
    if f.get("llama_server"):
        print(f"\nllama.cpp's C++ server (llama-server, {args.parallel} slots, continuous batching), same client:")
        print("| streams | llama-server | rstitch llm | rstitch default | default / llama-server | llm / llama-server |"
              "\n|---|---|---|---|---|---|")
        for c in f["levels"]:
            ls, rl, rd = (f[k][c]["tok_s"] for k in ("llama_server", "rstitch_llm", "rstitch_default"))
            print(f"| {c} | {ls:.1f} | {rl:.1f} | {rd:.1f} | {rd / ls:.2f}x | {rl / ls:.2f}x |")
    print("completion / prompt tokens, all timed requests: " + "; ".join(
        f"{k}: " + ", ".join(f"{f[k][c]['tokens']}/{f[k][c]['prompt_tokens']}" for c in f["levels"])
        for k in ("llamacpp", "rstitch_llm", "rstitch_default")))
    print("llama_cpp.server runs one request at a time (one lock around its model, llama_cpp/server/app.py "
          "get_llama_proxy): its tok/s at N streams vs "
          f"{f['levels'][0]}: " + ", ".join(
              f"{c}: {f['llamacpp'][c]['tok_s'] / f['llamacpp'][f['levels'][0]]['tok_s']:.2f}x" for c in f["levels"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: str, lines: int = 40) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f}"


if __name__ == "__main__":
    sys.exit(main())
