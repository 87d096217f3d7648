"""One topology object for the whole 3D layout, and the process groups derived from it.

Ranks are laid out as DeepSpeed's ``PipeModelDataParallelTopology``: axes (pipe, data, model), TP fastest,
so that the ranks of one TP group are neighbours (on a cluster: the GPUs of one node, over NVLink).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer.config import ConfigError, data_parallel_size
from trainer.parallel.mappings import TPGroup


@dataclass(frozen=True)
class ParallelDims:
    """tp x pp x dp; checked against the world size with an error that names every factor."""

    tp: int
    pp: int
    dp: int

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    def check(self, world_size: int) -> "ParallelDims":
        """The config's one world-size rule (:func:`trainer.config.data_parallel_size`)."""
        data_parallel_size(world_size, self.tp, self.pp, self.dp)
        return self

    def topology(self):
        from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
        return PipeModelDataParallelTopology(num_pp=self.pp, num_mp=self.tp, num_dp=self.dp)


@dataclass(frozen=True)
class RankCoords:
    """Where this rank sits in the 3D grid."""

    rank: int
    stage: int
    dp_rank: int
    tp_rank: int


def coords_of(dims: ParallelDims, rank: int) -> RankCoords:
    c = dims.topology().get_coord(rank)
    return RankCoords(rank=rank, stage=c.pipe, dp_rank=c.data, tp_rank=c.model)


def backend(cuda_available: bool | None = None) -> str:
    """gloo on CPUs; on GPUs NCCL for CUDA tensors and gloo for the few CPU ones (control flags, objects).

    With NCCL alone, the control all-reduce of a CPU tensor fails ("No backend type associated with device
    type cpu", seen on an H100); one process group with a backend per device type carries both.
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    return "cpu:gloo,cuda:nccl" if cuda_available else "gloo"


def init_distributed(timeout_s: float = 600.0) -> None:
    """Start torch.distributed through DeepSpeed from the launcher's env (RANK, WORLD_SIZE, MASTER_*).

    On CPU, DeepSpeed would JIT-compile a shared-memory all-reduce op (~35 s of g++) that only serves
    inference; we replace its builder so no op is compiled.
    """
    import datetime

    import deepspeed
    import deepspeed.comm  # noqa: F401  (loads deepspeed.comm.torch)

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ConfigError(f"{var} is not set: start ranks with `bigops launch` or torchrun")
    deepspeed.init_distributed(dist_backend=backend(), auto_mpi_discovery=False,
                               timeout=datetime.timedelta(seconds=timeout_s))


def new_tp_group(dims: ParallelDims, rank: int) -> TPGroup:
    """Create every TP group (all ranks must call this, in the same order) and return this rank's."""
    mine = TPGroup()
    for ranks in dims.topology().get_axis_comm_lists("model"):
        group = dist.new_group(ranks=ranks) if dims.tp > 1 else None
        if rank in ranks:
            mine = TPGroup(group=group, rank=ranks.index(rank), size=len(ranks), ranks=tuple(ranks))
    return mine
