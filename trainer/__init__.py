"""The BLOOM 3D-parallel DeepSpeed trainer. Imports nothing from ``bigops`` or ``launcher``."""
