"""R-Stitch (Algorithm 1) and the single-model baselines, which are the same loop with one gate shut."""

from __future__ import annotations

from typing import Iterator

from rstitch_core.config import Policy, RoutingParams
from rstitch_core.entropy import normalized_entropy
from rstitch_core.events import Event
from rstitch_core.policies.router import RouterInput, SwitchRouter
from rstitch_core.sampling import Sampler
from rstitch_core.sequence import ModelState, Sequence


def stitch(seq: Sequence, slm: ModelState, llm: ModelState, routing: RoutingParams,
           sampler: Sampler, router: SwitchRouter | None = None) -> Iterator[Event]:
    """Decode `seq` to the end, switching models on entropy.

    The SLM hands over when its entropy exceeds tau (its token is discarded: it was never fed to
    the SLM, so the SLM cache still ends at the last kept token and no rollback pass is needed);
    the LLM's token is always kept, and the LLM hands back as soon as its entropy is <= tau.
    `llm` and `slm` policies run this same loop with one model only.
    """
    tau = routing.threshold
    stitching = routing.policy is Policy.RSTITCH
    active = llm if routing.policy is Policy.LLM else slm
    turn_start, last_switch = True, 0
    while seq.running:
        consult = router is not None and active is slm
        out = active.step(seq.token_ids, turn_start, hidden=consult)
        turn_start = False
        logits = out.logits[-1]  # [V]
        entropy = float(normalized_entropy(logits))
        token = sampler.sample(logits)
        if active is slm and stitching and entropy > tau and (not consult or router(RouterInput(
                out.hidden, len(seq.token_ids), seq.num_generated, entropy,
                seq.num_generated - last_switch))):
            seq.stats.discarded_tokens += 1
            yield seq.switch("slm_to_llm", llm)
            active, turn_start, last_switch = llm, True, seq.num_generated
            continue
        yield seq.append(token, active.source, entropy)
        if active is llm and stitching and entropy <= tau and seq.running:
            yield seq.switch("llm_to_slm", slm)
            active, turn_start, last_switch = slm, True, seq.num_generated
    yield seq.finish()
