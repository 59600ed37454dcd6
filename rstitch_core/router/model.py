"""The router network, its features, and its file: one safetensors file with its config inside.

A router reads the SLM's final hidden state, so it only means something for the SLM it was trained
on. The file records that SLM's fingerprint (a hash of part of its input embedding, rounded to
bfloat16 so a float32 and a bfloat16 load of the same weights agree) and loading checks it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from rstitch_core.models.llamacpp import HIDDEN_REFUSAL
from rstitch_core.router.switch import RouterInput

FORMAT = "rstitch-router"
VERSION = 1
FEATURES = ("entropy", "context", "generated", "since_switch")  # scalars next to the hidden state
_FINGERPRINT_ROWS = 256


class RouterError(ValueError):
    """A router file that cannot be used: unreadable, another format, or made for another SLM."""


@dataclass(frozen=True)
class RouterConfig:
    """What a router was built for and how it reads its inputs."""

    slm_name: str  # for messages only
    slm_fingerprint: str
    hidden_size: int
    tau: float  # the router is consulted where the SLM's normalized entropy exceeds this
    max_context: int  # positions are normalized by it
    width: int = 64
    features: tuple[str, ...] = FEATURES
    decision_threshold: float = 0.5  # hand over when P(hand over) >= this

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        if not (isinstance(self.tau, (int, float)) and 0 <= self.tau <= 1):
            raise RouterError(f"router tau must be in [0, 1], got {self.tau!r}")
        if not (isinstance(self.hidden_size, int) and self.hidden_size >= 1):
            raise RouterError(f"router hidden_size must be an integer >= 1, got {self.hidden_size!r}")
        if not (isinstance(self.width, int) and self.width >= 1):
            raise RouterError(f"router width must be an integer >= 1, got {self.width!r}")
        if not (isinstance(self.max_context, int) and self.max_context >= 1):
            raise RouterError(f"router max_context must be an integer >= 1, got {self.max_context!r}")
        if not 0 < self.decision_threshold < 1:
            raise RouterError(f"router decision_threshold must be in (0, 1), got {self.decision_threshold!r}")
        unknown = set(self.features) - set(FEATURES)
        if unknown:
            raise RouterError(f"unknown router features {sorted(unknown)}; known: {', '.join(FEATURES)}")


class RouterNet(nn.Module):
    """A two-layer MLP: (normalized hidden state, scalar features) -> logit of P(hand over)."""

    def __init__(self, hidden_size: int, num_scalars: int, width: int):
        super().__init__()
        # Final hidden states have model-specific scales; normalizing them keeps the MLP's
        # initialization and learning rate sensible for any SLM.
        self.norm = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(nn.Linear(hidden_size + num_scalars, width), nn.GELU(),
                                 nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, hidden: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        """hidden [B, D], scalars [B, S] -> logits [B]."""
        return self.mlp(torch.cat([self.norm(hidden), scalars], dim=-1)).squeeze(-1)


class LearnedRouter:
    """A trained router: callable as a SwitchRouter (True = the LLM takes over)."""

    def __init__(self, config: RouterConfig, net: RouterNet | None = None):
        self.config = config
        self.net = (net or RouterNet(config.hidden_size, len(config.features), config.width)).eval()
        self._log_context = math.log1p(config.max_context)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def scalars(self, x: RouterInput) -> list[float]:
        """The scalar features of one decision, each roughly in [0, 1]."""
        c = self.config
        values = {"entropy": x.entropy,
                  "context": min(x.context_length / c.max_context, 1.0),
                  "generated": math.log1p(x.num_generated) / self._log_context,
                  "since_switch": math.log1p(x.tokens_since_switch) / self._log_context}
        return [values[name] for name in c.features]

    def inputs(self, x: RouterInput) -> tuple[torch.Tensor, torch.Tensor]:
        """One decision as network inputs: hidden [D] float32, scalars [S] float32 (router's device)."""
        if x.hidden_state.shape[-1] != self.config.hidden_size:
            raise RouterError(f"router expects hidden states of size {self.config.hidden_size}, "
                              f"got {tuple(x.hidden_state.shape)}")
        hidden = x.hidden_state.detach().to(self.device, torch.float32)
        return hidden, torch.tensor(self.scalars(x), dtype=torch.float32, device=self.device)

    @torch.inference_mode()
    def probability(self, x: RouterInput) -> float:
        """P(hand over to the LLM) at this uncertain SLM position."""
        hidden, scalars = self.inputs(x)
        return float(torch.sigmoid(self.net(hidden[None], scalars[None]))[0])

    def __call__(self, x: RouterInput) -> bool:
        return self.probability(x) >= self.config.decision_threshold

    def check_slm(self, slm) -> None:
        """Raise RouterError unless `slm` (a ModelRunner) is the SLM this router was trained on."""
        if getattr(slm, "backend", "torch") != "torch":
            raise RouterError(f"R-Stitch+ (rstitch+): {HIDDEN_REFUSAL}")
        found = slm_fingerprint(slm)
        if found != self.config.slm_fingerprint or slm.hidden_size != self.config.hidden_size:
            raise RouterError(
                f"this router was trained for SLM {self.config.slm_name!r} (hidden size "
                f"{self.config.hidden_size}, fingerprint {self.config.slm_fingerprint[:12]}), but the SLM "
                f"loaded is {slm.name!r} (hidden size {slm.hidden_size}, fingerprint {found[:12]}); "
                "train a router for this SLM (rstitch router train)")

    def bind(self, slm) -> LearnedRouter:
        """Check the SLM and move the router next to its hidden states."""
        self.check_slm(slm)
        self.net.to(slm.device)
        return self

    def save(self, path: str | Path) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        meta = {"format": FORMAT, "version": str(VERSION), "config": json.dumps(asdict(self.config))}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, slm=None) -> LearnedRouter:
        """Read a router file; with `slm` (a ModelRunner) also check it and bind to its device."""
        path = Path(path)
        if not path.is_file():
            raise RouterError(f"router file {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
            raise RouterError(f"{path}: not a router file ({err})") from None
        if meta.get("format") != FORMAT:
            raise RouterError(f"{path}: not a router file (format {meta.get('format')!r}, expected {FORMAT!r})")
        if meta.get("version") != str(VERSION):
            raise RouterError(f"{path}: router file version {meta.get('version')!r}; this rstitch reads {VERSION}")
        try:
            config = RouterConfig(**json.loads(meta["config"]))
            router = cls(config)
            router.net.load_state_dict(tensors)
        except (KeyError, TypeError, RuntimeError, json.JSONDecodeError) as err:
            raise RouterError(f"{path}: damaged router file ({err})") from None
        return router.bind(slm) if slm is not None else router


def slm_fingerprint(slm) -> str:
    """sha256 of the SLM's shape and first embedding rows, rounded to bfloat16 (dtype-independent)."""
    weight = slm.model.get_input_embeddings().weight
    rows = weight[:_FINGERPRINT_ROWS].detach().to("cpu", torch.bfloat16).view(torch.int16)
    digest = hashlib.sha256(f"{tuple(weight.shape)}|{slm.hidden_size}|".encode())
    digest.update(rows.numpy().tobytes())
    return digest.hexdigest()
