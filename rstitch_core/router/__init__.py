"""R-Stitch+: a learned router that decides, where the SLM is uncertain, whether the LLM takes over."""

from rstitch_core.router.model import (
                                       LearnedRouter,
                                       RouterConfig,
                                       RouterError,
                                       RouterNet,
                                       slm_fingerprint,
)

__all__ = ["LearnedRouter", "RouterConfig", "RouterError", "RouterNet", "slm_fingerprint"]
