"""rstitch_eval: GSM8K accuracy and speed of R-Stitch against its baselines (`rstitch eval`).

Pure Python over rstitch_core: gsm8k (the offline test set), prompts, answers (extraction and
comparison), runner (resumable per-problem records), summary, plot, calibrate (choosing tau).
"""
