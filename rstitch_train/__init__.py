"""Training: the synthetic SLM/LLM pair and the R-Stitch+ router (supervised, then RL)."""
