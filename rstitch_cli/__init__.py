"""The `rstitch` command line: generate, bench (and, with later packages, serve and eval)."""
