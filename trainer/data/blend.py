"""Blends of datasets by weight, as Megatron's ``--data-path W1 P1 W2 P2 ...``, as a pure function of position.

Megatron builds its blend with a greedy rule: sample ``i`` goes to the dataset furthest behind its share
(``argmax_d w_d * (i + 1) - count_d``), and stores the resulting index arrays for the whole run. Here the same
rule is applied within one block of ``BLOCK`` positions and the block repeats: position ``i`` is block
``i // BLOCK``, offset ``i % BLOCK``; the offset says the dataset, and the dataset's own position is the
count of its samples in earlier blocks plus its rank within this block. Every dataset gets exactly its
apportioned share of every block (largest remainder of ``w_d * BLOCK``), so the realised mixture equals the
weights to within ``1 / BLOCK`` from the first block on; and any position, in any process, after any resume
or skip range, maps to the same sample in O(1) without index files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

BLOCK = 10_000
"""Positions per repeating block: the weights are met to 1e-4."""


class BlendError(ValueError):
    """A ``--data-path``-style blend that cannot be parsed; one line."""


def parse_blend(spec: str) -> list[tuple[float, str]]:
    """``"0.3 a 0.7 b"`` -> ``[(0.3, "a"), (0.7, "b")]``; a single path (no weight) -> ``[(1.0, path)]``.
    Weights are relative (they need not sum to 1), as in Megatron."""
    from trainer.data.indexed import is_indexed

    words = spec.split()
    if len(words) == 1 or Path(spec).exists() or is_indexed(spec):  # one path (it may hold spaces)
        return [(1.0, spec)]
    if not words or len(words) % 2:
        raise BlendError(f"data.source={spec!r}: give one path, or weight-path pairs as Megatron's "
                         f"--data-path (e.g. '0.3 /data/a_text_document 0.7 /data/b_text_document')")
    blend = []
    for weight, path in zip(words[::2], words[1::2]):
        try:
            value = float(weight)
        except ValueError:
            raise BlendError(f"data.source: {weight!r} is not a weight (weight-path pairs, as Megatron's "
                             f"--data-path)") from None
        if not value > 0:
            raise BlendError(f"data.source: weight {weight} of {path} must be positive")
        blend.append((value, path))
    return blend


def absolute_paths(spec: str) -> str:
    """``data.source`` with its path(s) made absolute (the ranks may run elsewhere); a blend keeps its weights.
    A spec that does not parse is returned as it is, for validation to name."""
    try:
        blend = parse_blend(spec)
    except BlendError:
        return spec
    if len(blend) == 1:
        return str(Path(spec).resolve())
    return " ".join(f"{weight!r} {Path(path).resolve()}" for weight, path in blend)


def apportion(weights: Sequence[float], total: int) -> np.ndarray:
    """Integer shares of ``total`` proportional to ``weights`` (largest remainder; every share >= 1 if
    ``total`` allows, so that no named dataset is silently dropped)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * total
    shares = np.maximum(np.floor(exact).astype(np.int64), 1)
    while shares.sum() > total:
        shares[np.argmax(shares)] -= 1
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    i = 0
    while shares.sum() < total:
        shares[order[i % len(order)]] += 1
        i += 1
    return shares


def greedy_order(shares: np.ndarray) -> np.ndarray:
    """Megatron's blending rule over one block: at each offset, the dataset furthest behind its share."""
    total = int(shares.sum())
    weights = shares / total
    counts = np.zeros(len(shares), dtype=np.int64)
    order = np.empty(total, dtype=np.int64)
    for i in range(total):
        d = int(np.argmax(weights * (i + 1) - counts))
        order[i] = d
        counts[d] += 1
    return order


@dataclass(frozen=True)
class BlendSchedule:
    """position -> (dataset, that dataset's own position). Pure and O(1) (module docstring)."""

    shares: np.ndarray   # (D,) samples of each dataset per block
    order: np.ndarray    # (BLOCK,) dataset of each offset
    rank: np.ndarray     # (BLOCK,) the offset's rank among its dataset's offsets in the block

    @classmethod
    def of(cls, weights: Sequence[float], block: int = BLOCK) -> "BlendSchedule":
        shares = apportion(weights, block)
        order = greedy_order(shares)
        rank = np.empty(block, dtype=np.int64)
        seen = np.zeros(len(shares), dtype=np.int64)
        for i, d in enumerate(order):
            rank[i] = seen[d]
            seen[d] += 1
        return cls(shares, order, rank)

    def locate(self, position: int) -> tuple[int, int]:
        block, offset = divmod(position, len(self.order))
        d = int(self.order[offset])
        return d, block * int(self.shares[d]) + int(self.rank[offset])


def blended(sources: Sequence[Callable[[int], torch.Tensor]], weights: Sequence[float]
            ) -> Callable[[int], torch.Tensor]:
    """One sample source from several, mixed by weight (one source: itself)."""
    if len(sources) == 1:
        return sources[0]
    schedule = BlendSchedule.of(weights)

    def sample(position: int) -> torch.Tensor:
        d, own = schedule.locate(position)
        return sources[d](own)

    return sample
