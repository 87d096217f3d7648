"""Tensor, pipeline and data parallelism, applied to the BLOOM model from outside."""
