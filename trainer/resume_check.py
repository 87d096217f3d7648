"""The resume's hash check, split over the ranks: each rank hashes only the files it loads, all at once.

A checkpoint the watchdog's verifier stamped (``trainer.verified``) needs no hashing at all: its files' sizes,
mtimes and inodes say they are the bytes that were hashed. Whatever the stamp does not vouch for (no stamp
yet: the save was just published, the run has no watchdog; or files changed since) is hashed here, after the
engine is built (it knows which pipeline layers this rank holds) and before anything is loaded:

- ``layer_LL-model_TT-model_states.pt``: by a rank of TP rank TT whose stage holds layer LL (of the data-parallel
  replicas that load it, the one with ``dp_rank == LL % dp``);
- ``mp_rank_MM_model_states.pt`` (the engine file of model-parallel rank MM = stage x TP + tp_rank): by the
  replica ``dp_rank == MM % dp`` of MM;
- ``[bf16_]zero_pp_rank_DD_mp_rank_MM_optim_states.pt``: by data-parallel rank DD of MM;
- ``rng_state_rankNNNNN.pt``: by rank NNNNN;
- anything no rank claims (a universal checkpoint's folders, a file of another layout): by rank 0.

The ranks hash in parallel (a 1/N share each instead of one rank reading everything) and gather what they
found; rank 0 records it in the stamp (so the next restart trusts those files) and every rank gets the same
list of problems, so one damaged file anywhere stops every rank from loading that checkpoint.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

LAYER_RE = re.compile(r"^layer_(?P<layer>\d+)-model_(?P<tp>\d+)-model_states\.pt$")
OPTIM_RE = re.compile(r"^(?P<bf16>bf16_)?zero_pp_rank_(?P<dp>\d+)_mp_rank_(?P<mp>\d+)_optim_states\.pt$")
ENGINE_RE = re.compile(r"^mp_rank_(?P<mp>\d+)_model_states\.pt$")
RNG_RE = re.compile(r"^rng_state_rank(?P<rank>\d+)\.pt$")


@dataclass(frozen=True)
class RankShare:
    """Where a rank sits, as far as which checkpoint files it loads goes."""

    rank: int
    stage: int
    dp_rank: int
    tp_rank: int
    tp: int
    dp: int
    layers: range
    """The pipeline layer indices this rank's stage holds (``PipelineModule._local_start/_local_stop``)."""

    @property
    def mp_rank(self) -> int:
        return self.stage * self.tp + self.tp_rank


def hashed_by(name: str, share: RankShare) -> bool:
    """Does this rank hash file ``name`` (a bare file name of the tag directory)? Pure: see the module docstring."""
    if m := LAYER_RE.match(name):
        layer = int(m["layer"])
        return int(m["tp"]) == share.tp_rank and layer in share.layers and share.dp_rank == layer % share.dp
    if m := ENGINE_RE.match(name):
        return int(m["mp"]) == share.mp_rank and share.dp_rank == int(m["mp"]) % share.dp
    if m := OPTIM_RE.match(name):
        return int(m["mp"]) == share.mp_rank and int(m["dp"]) == share.dp_rank
    if m := RNG_RE.match(name):
        return int(m["rank"]) == share.rank
    return False


def share_of(engine, ctx) -> RankShare:
    """This rank's share, from the built engine (which layers its stage holds) and its coordinates."""
    module = engine.module
    start = getattr(module, "_local_start", 0)
    stop = getattr(module, "_local_stop", None)
    layers = range(start, stop) if stop is not None else range(0, 1 << 30)  # unknown: every layer of its TP rank
    c = ctx.coords
    return RankShare(rank=c.rank, stage=c.stage, dp_rank=c.dp_rank, tp_rank=c.tp_rank, tp=ctx.dims.tp,
                     dp=ctx.dims.dp, layers=layers)


@dataclass(frozen=True)
class Outcome:
    problems: list[str]
    """Every rank's problems, ``rank K: <file>: <what>``, sorted (the same list on every rank)."""
    files: int
    bytes: int
    seconds: float


def check_share(directory, manifest: dict, unverified: list[str], share: RankShare, rank0: bool,
                claimed_elsewhere: set[str]) -> dict:
    """Hash the files of ``unverified`` this rank loads (rank 0 also those nobody claimed): {rel: result}."""
    from trainer import verified

    mine = [rel for rel in unverified if "/" not in rel and hashed_by(rel, share)]
    if rank0:
        mine += [rel for rel in unverified if rel not in claimed_elsewhere and rel not in mine]
    return verified.hash_files(directory, manifest, sorted(mine))


def check_loaded_files(engine, ctx, resumable) -> Outcome:
    """Collective: hash what the stamp does not vouch for, each rank its share; rank 0 stamps the results."""
    import torch.distributed as dist

    from trainer import verified

    started = time.perf_counter()
    holder = [sorted(verified.check(resumable.path, resumable.manifest).unverified) if ctx.is_logging_rank else None]
    dist.broadcast_object_list(holder, src=0)  # rank 0's view: every rank takes the same path through the gathers
    unverified = holder[0]
    if not unverified:
        return Outcome(problems=[], files=0, bytes=0, seconds=time.perf_counter() - started)
    share = share_of(engine, ctx)
    claims = [None] * ctx.dims.world_size
    dist.all_gather_object(claims, [rel for rel in unverified if "/" not in rel and hashed_by(rel, share)])
    claimed = {rel for rank, names in enumerate(claims) if rank != 0 for rel in names}
    results = check_share(resumable.path, resumable.manifest, unverified, share, ctx.is_logging_rank, claimed)
    gathered = [None] * ctx.dims.world_size
    dist.all_gather_object(gathered, results)
    problems, files, size = [], 0, 0
    merged: dict = {}
    for rank, part in enumerate(gathered):
        for rel, r in sorted(part.items()):
            merged[rel] = r
            files += 1
            size += r.get("size", 0)
            if r.get("ok") is not True:
                problems.append(f"rank {rank}: {r['problem']}")
    seconds = time.perf_counter() - started
    if ctx.is_logging_rank and merged:
        verified.record(resumable.path, merged, verified.who("trainer rank 0 (resume check)"), seconds)
    return Outcome(problems=sorted(problems), files=files, bytes=size, seconds=seconds)
