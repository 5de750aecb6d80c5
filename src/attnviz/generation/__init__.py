"""Generation with attention: `run` continues a prompt and records each step; `transform` pools
and re-weights a `Generation` as the analyses do an `Attention`."""
