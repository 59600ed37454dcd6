"""Train a small and a large causal LM on the arithmetic-chain task, as an SLM/LLM pair.

Both are Qwen2-architecture models (pre-norm, rotary, tied embeddings) over the task's 19-symbol
character vocabulary, saved as ordinary Hugging Face folders with one shared tokenizer, so every
part of rstitch loads them like any other pair. Loss is on the answer only (after the prompt).
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rstitch_eval import arith

CONTEXT = 64


@dataclass(frozen=True)
class ModelSpec:
    hidden: int
    layers: int
    steps: int
    lr: float = 3e-3


# Sizes chosen so the SLM is right on roughly half the problems and the LLM on nearly all of them:
# that gap is what routing has to recover.
SLM_SPEC = ModelSpec(hidden=64, layers=2, steps=400)
LLM_SPEC = ModelSpec(hidden=128, layers=4, steps=800)


def build_tokenizer():
    """A character-level fast tokenizer over arith.SYMBOLS; the newline is EOS (and padding)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(arith.SYMBOLS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=arith.EOS, pad_token=arith.EOS)


def build_model(spec: ModelSpec, vocab_size: int, eos_id: int, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab_size, hidden_size=spec.hidden, intermediate_size=4 * spec.hidden,
                         num_hidden_layers=spec.layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=CONTEXT, tie_word_embeddings=True, eos_token_id=eos_id,
                         bos_token_id=None, pad_token_id=eos_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = eos_id
    return model


def batch(tokenizer, problems: list) -> tuple[torch.Tensor, torch.Tensor]:
    """input ids [B, T] and labels [B, T] (-100 outside the answer), right-padded with EOS."""
    rows, labels = [], []
    for p in problems:
        prompt = tokenizer.encode(p.question)
        target = tokenizer.encode(arith.target_text(p))
        rows.append(prompt + target)
        labels.append([-100] * len(prompt) + target)
    width = max(len(r) for r in rows)
    if width > CONTEXT:
        raise ValueError(f"a training sequence has {width} tokens, more than the context {CONTEXT}")
    pad = tokenizer.eos_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
    return ids, lab


def train_model(spec: ModelSpec, tokenizer, seed: int, batch_size: int = 64, progress: bool = True,
                name: str = "model"):
    """AdamW with warm-up and cosine decay on fresh training-split problems every step."""
    from tqdm import tqdm

    model = build_model(spec, len(tokenizer), tokenizer.eos_token_id, seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, spec.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + torch.cos(torch.tensor(torch.pi * min(s, spec.steps) / spec.steps)).item()))
    stream = arith.problems("train", seed=seed)
    bar = tqdm(range(spec.steps), desc=f"train {name}", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for _ in bar:
        ids, labels = batch(tokenizer, [next(stream) for _ in range(batch_size)])
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval()


@torch.inference_mode()
def exact_match(model, tokenizer, problems: list) -> float:
    """Greedy exact-match accuracy of the final answer (batched, no cache: the sequences are short)."""
    right = 0
    for p in problems:
        ids = tokenizer.encode(p.question)
        for _ in range(CONTEXT - len(ids)):
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            if nxt == tokenizer.eos_token_id:
                break
        text = tokenizer.decode(ids[len(tokenizer.encode(p.question)):])
        right += arith.extract_answer(text) == p.short_answer
    return right / len(problems)


def train_pair(out: Path, seed: int = 0, slm: ModelSpec = SLM_SPEC, llm: ModelSpec = LLM_SPEC,
               check_problems: int = 200, progress: bool = True) -> dict:
    """Train both models, save `out/slm` and `out/llm`, and return (and save) a report."""
    random.seed(seed)
    tokenizer = build_tokenizer()
    check = arith.load_arith(0, check_problems, split="train")  # held-out-from-eval sanity check
    report = {"task": arith.PROMPT_VERSION, "seed": seed, "models": {}}
    for name, spec in (("slm", slm), ("llm", llm)):
        start = time.perf_counter()
        model = train_model(spec, tokenizer, seed + (name == "llm"), progress=progress, name=name)
        seconds = time.perf_counter() - start
        folder = out / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        report["models"][name] = {**asdict(spec), "params": sum(p.numel() for p in model.parameters()),
                                  "train_seconds": round(seconds, 1),
                                  "exact_match": exact_match(model, tokenizer, check)}
    (out / "pair.json").write_text(json.dumps(report, indent=1) + "\n")
    return report
