"""bigops: keep a long LLM pre-training run alive (launch, watch, repair)."""

__version__ = "0.1.0"
