"""Training data: token sources and the deterministic, layout-independent sampler."""
