"""Checkpoint tools: read DeepSpeed checkpoints of any layout, export them."""
