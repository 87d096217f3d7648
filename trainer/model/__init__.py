"""BLOOM architecture (no parallelism here; see ``trainer.parallel`` and ``trainer.pipeline``)."""

from trainer.model.bloom import (BloomAttention, BloomBlock, BloomForCausalLM, BloomMLP, alibi_slopes,
                                 init_parameters)

__all__ = ["BloomAttention", "BloomBlock", "BloomForCausalLM", "BloomMLP", "alibi_slopes", "init_parameters"]
