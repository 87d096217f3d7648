"""The batch schedule: how many samples each step reads, and which positions, counted without listing them.

Torch-free (the watchdog's decisions import it): ``trainer.data.sampler`` takes the positions themselves;
this module answers "how big is the global batch at sample N" (the batch-size ramp-up,
:func:`batch_size_at`), "where does step N start" for a rollback's skip range (bigops/watchdog/decide.py) and
for ``bigops surgery --skip-iterations`` (iterations -> the sample range recorded in ``control/skip-ranges``),
and how many steps a number of samples takes (the ``bloom-176b`` preset's samples in steps).

The ramp-up is Megatron's ``--rampup-batch-size <start> <increment> <ramp samples>``
(``megatron/microbatches.py``, ``RampupBatchsizeNumMicroBatches``, as in bigscience-workshop/Megatron-DeepSpeed,
which trained BLOOM-176B with ``192 16 9_765_625``): the global batch starts at ``start`` and grows by
``increment`` every ``ramp samples / ((global - start) / increment)`` consumed samples, the full global batch
once more than ``ramp samples`` are consumed. It is a function of the consumed samples (the stream position the
trainer saves), not of the step, so a resume and a skip range land on exactly the batches an uninterrupted
run reads. Megatron counts the samples of skipped iterations as consumed; so does bigops: a skip range moves
the ramp on with the stream.
"""

from __future__ import annotations

import functools
from typing import Sequence


def batch_size_at(consumed: int, global_batch_size: int, rampup: Sequence[int] | None = None) -> int:
    """The global batch of the step that starts at ``consumed`` samples; ``rampup``: (start, increment, ramp
    samples), or None (no ramp-up: always ``global_batch_size``).

    Megatron's arithmetic to the bit (``RampupBatchsizeNumMicroBatches.update``): the samples per increment are
    a float (9_765_625 / 116 = 84186.42... for BLOOM), the increments so far are ``int()`` of a float division
    (truncation), and the ramp ends once ``consumed`` is *more* than the ramp samples. The config
    (``trainer.config``) has checked that start and increment are multiples of micro-batch x DP and that the
    increments reach the global batch exactly, which Megatron asserts step by step."""
    if rampup is None:
        return global_batch_size
    start, increment, samples = rampup
    if consumed > samples:
        return global_batch_size
    samples_per_increment = samples / ((global_batch_size - start) // increment)
    return start + int(consumed / samples_per_increment) * increment


def consumed_after(consumed: int, steps: int, global_batch_size: int, rampup: Sequence[int] | None = None,
                   skip_ranges: Sequence[tuple[int, int]] = ()) -> int:
    """The trainer's ``consumed_samples`` after ``steps`` more steps from ``consumed``: each step takes
    :func:`batch_size_at` samples outside ``skip_ranges`` and ends after the last one it took (as
    ``trainer.data.sampler.batch_positions``). Step by step while the ramp lasts, then in one go."""
    ranges = sorted(tuple(r) for r in skip_ranges)
    while steps > 0 and rampup is not None and consumed <= rampup[2]:
        consumed = advance(consumed, batch_size_at(consumed, global_batch_size, rampup) - 1, ranges) + 1
        steps -= 1
    return advance(consumed, steps * global_batch_size - 1, ranges) + 1 if steps > 0 else consumed


def samples_before_step(step: int, global_batch_size: int, rampup: Sequence[int] | None = None) -> int:
    """The samples the first ``step`` steps train on (from sample 0, no skip ranges): a sample-based LR schedule's
    position at step ``step`` (0-based). O(1) after the ramp's steps are tabled once."""
    if rampup is None:
        return step * global_batch_size
    table = _ramp_table(global_batch_size, *rampup)
    if step < len(table):
        return table[step]
    return table[-1] + (step - len(table) + 1) * global_batch_size


@functools.lru_cache(maxsize=8)
def _ramp_table(global_batch_size: int, start: int, increment: int, samples: int) -> tuple[int, ...]:
    """Consumed samples before each step of the ramp, up to the first step of the full global batch."""
    table, consumed = [0], 0
    while consumed <= samples:
        consumed += batch_size_at(consumed, global_batch_size, (start, increment, samples))
        table.append(consumed)
    return tuple(table)


def train_iters_for_samples(train_samples: int, global_batch_size: int, rampup: Sequence[int] | None = None) -> int:
    """Megatron's ``update_train_iters`` (``--train-samples`` in iterations): the whole ramp-up (while the consumed
    samples are at most the ramp samples), then as many full global batches as fit; a partial last batch is
    thrown away, as there."""
    iterations, consumed = 0, 0
    while rampup is not None and consumed <= rampup[2]:
        consumed += batch_size_at(consumed, global_batch_size, rampup)
        iterations += 1
    return iterations + (train_samples - consumed) // global_batch_size


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
                           resume_consumed: int = 0, skip_ranges: Sequence[tuple[int, int]] = (),
                           rampup: Sequence[int] | None = None) -> tuple[int, int]:
    """The sample range ``[start, end)`` that steps ``first..last`` (inclusive, 1-based: step N is the one a
    ``global_stepN`` checkpoint was saved after) will read, for ``bigops surgery --skip-iterations``.

    This is Megatron's ``--skip-train-iteration-range A-B``: the batches iterations A..B would consume are
    skipped, the iteration count goes on, so step A trains on what step B+1 would have read. The run resumes
    after ``resume_step`` at sample ``resume_consumed`` and every step takes :func:`batch_size_at` samples
    (``global_batch_size`` unless ``rampup``) outside ``skip_ranges``. Skip ranges
    already inside ``[start, end)`` are covered by it, which changes nothing. ValueError (one line) unless
    ``resume_step < first <= last``.
    """
    if not 1 <= first <= last:
        raise ValueError(f"iterations {first}-{last}: need 1 <= A <= B")
    if first <= resume_step:
        raise ValueError(f"iterations {first}-{last}: the run resumes after step {resume_step}, so steps up to "
                         f"{resume_step} are trained already; give iterations after {resume_step}, or point latest "
                         f"at an earlier checkpoint first")
    before = consumed_after(resume_consumed, first - 1 - resume_step, global_batch_size, rampup, skip_ranges)
    return advance(before, 0, skip_ranges), consumed_after(before, last - first + 1, global_batch_size, rampup,
                                                           skip_ranges)
