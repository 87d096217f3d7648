"""The batch schedule: which sample positions a run's steps read, counted without listing them.

Torch-free (the watchdog's decisions import it): ``trainer.data.sampler`` takes the positions themselves;
this module only answers "where does step N start" for a rollback's skip range (bigops/watchdog/decide.py)
and for ``bigops surgery --skip-iterations`` (iterations -> the sample range recorded in
``control/skip-ranges``).
"""

from __future__ import annotations

from typing import Sequence


def advance(position: int, samples: int, skip_ranges) -> int:
    """The first sample read after consuming ``samples`` from ``position``, skipping the (end-exclusive)
    ranges as ``trainer.data.sampler.batch_positions`` does, in O(ranges) (a BLOOM run's steps times 2048
    samples are too many to list)."""
    left = samples
    for start, end in sorted(tuple(r) for r in skip_ranges):
        if end <= position:
            continue
        if start > position:
            gap = start - position
            if left < gap:
                return position + left
            left -= gap
        position = end
    return position + left


def iteration_sample_range(first: int, last: int, *, global_batch_size: int, resume_step: int = 0,
                           resume_consumed: int = 0, skip_ranges: Sequence[tuple[int, int]] = ()) -> tuple[int, int]:
    """The sample range ``[start, end)`` that steps ``first..last`` (inclusive, 1-based: step N is the one a
    ``global_stepN`` checkpoint was saved after) will read, for ``bigops surgery --skip-iterations``.

    This is Megatron's ``--skip-train-iteration-range A-B``: the batches iterations A..B would consume are
    skipped, the iteration count goes on, so step A trains on what step B+1 would have read. The run resumes
    after ``resume_step`` at sample ``resume_consumed`` and every step takes ``global_batch_size`` samples
    outside ``skip_ranges`` (bigops has no batch-size ramp-up: the schedule is that constant). Skip ranges
    already inside ``[start, end)`` are covered by it, which changes nothing. ValueError (one line) unless
    ``resume_step < first <= last``.
    """
    if not 1 <= first <= last:
        raise ValueError(f"iterations {first}-{last}: need 1 <= A <= B")
    if first <= resume_step:
        raise ValueError(f"iterations {first}-{last}: the run resumes after step {resume_step}, so steps up to "
                         f"{resume_step} are trained already; give iterations after {resume_step}, or point latest "
                         f"at an earlier checkpoint first")
    start = advance(resume_consumed, (first - 1 - resume_step) * global_batch_size, skip_ranges)
    end = advance(start, (last - first + 1) * global_batch_size - 1, skip_ranges) + 1
    return start, end
