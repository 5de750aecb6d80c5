"""Analyses over extracted attention: aggregation, rollout, norm weighting, minimal pairs, clustering.

Each module works on `Attention` results (arrays in, dataclasses out) and never prints; the model is
needed only where its weights are (norm weighting) or where texts must be run (cluster).
"""
