"""How a run starts: spawn ranks locally (and, later, SLURM and SSH)."""
