"""R-Stitch (Algorithm 1) and the single-model baselines, which are the same loop with one gate shut."""

from __future__ import annotations

from typing import Generator, Iterator

from rstitch_core.config import Policy, RoutingParams
from rstitch_core.entropy import normalized_entropy
from rstitch_core.events import Event, TokenEvent
from rstitch_core.policies.router import RouterInput, SwitchRouter
from rstitch_core.sampling import Sampler
from rstitch_core.sequence import ModelState, Sequence


def stitch(seq: Sequence, slm: ModelState, llm: ModelState, routing: RoutingParams,
           sampler: Sampler, router: SwitchRouter | None = None) -> Iterator[Event]:
    """Decode `seq` to the end, alternating turns between the models.

    The `llm` and `slm` policies run this same loop; their gates never open, so it is one turn.
    """
    active, other = (llm, slm) if routing.policy is Policy.LLM else (slm, llm)
    while seq.running:
        if (yield from run_turn(seq, active, routing, sampler, router)):
            active.idle()  # a batched runner stops waiting for this sequence
            yield seq.switch(f"{active.source}_to_{other.source}", other.num_cached)
            active, other = other, active
    yield seq.finish()


def run_turn(seq: Sequence, model: ModelState, routing: RoutingParams, sampler: Sampler,
             router: SwitchRouter | None = None) -> Generator[TokenEvent, None, bool]:
    """Decode on `model` from the end of `seq` until it must hand over (returns True) or the
    sequence finishes (returns False). Yields each kept token as it is appended.

    The first pass partially prefills every token the model has not seen. The SLM hands over when
    its entropy exceeds tau (and the router, if any, agrees): its token is discarded, and since it
    was never fed to the SLM the SLM cache already ends at the last kept token (no rollback pass).
    The LLM's token is always kept; the LLM hands back as soon as its entropy is <= tau.
    """
    stitching = routing.policy.stitches
    consult = routing.policy is Policy.RSTITCH_PLUS and model.source == "slm"
    if consult and router is None:
        raise ValueError("the rstitch+ policy needs a router")
    turn_start = True
    while seq.running:
        out = model.step(seq.token_ids, turn_start, hidden=consult)
        turn_start = False
        logits = out.logits[-1]  # [V]
        entropy = float(normalized_entropy(logits))
        token = sampler.sample(logits)
        if model.source == "slm" and stitching and entropy > routing.threshold and (
                not consult or router(RouterInput(out.hidden, len(seq.token_ids), seq.num_generated,
                                                  entropy, seq.num_generated - seq.last_switch))):
            return True
        yield seq.append(token, model.source, entropy)
        if model.source == "llm" and stitching and entropy <= routing.threshold and seq.running:
            return True
    return False
