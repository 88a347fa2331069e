"""Latency planning: device profiles, per-layer graph costs, the roofline predictor and its fit, and the
selection of the largest model within a latency budget."""
from effedge.plan.profiles import Profile, load_profile

__all__ = ["Profile", "load_profile"]
