"""Heads: rank the heads that link two words (`search`), score classic patterns (`patterns`),
find induction heads (`induction`), remove heads (`ablation`) and compare the two (`effects`)."""
