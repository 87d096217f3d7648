"""``bigops surgery --skip-iterations A-B``: skip ranges given in iterations, as BLOOM's operators gave them
(Megatron's ``--skip-train-iteration-range``), recorded in samples in ``control/skip-ranges``.

Iterations A-B (inclusive) are the batches steps A..B will read once the run resumes from the surgery's
source checkpoint: counted from its step and ``consumed_samples``, ``train.global_batch_size`` samples a
step (fewer while ``train.rampup_batch_size`` ramps up), past the skip ranges already in force (the file's, the checkpoint's and this command's
``--skip-range``), by the pure ``trainer.data.schedule.iteration_sample_range``. As in Megatron, the step
count goes on: step A then trains on what step B+1 would have read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer import config as config_mod
from trainer.checkpoint import skip_ranges_of
from trainer.data.schedule import iteration_sample_range
from trainer.rundir import RunDir, load_run_config


@dataclass(frozen=True)
class IterationSkip:
    """Iterations ``first..last`` and the sample range ``[start, end)`` they convert to."""

    first: int
    last: int
    start: int
    end: int

    @property
    def note(self) -> str:
        return f"bigops surgery --skip-iterations {self.first}-{self.last}"


def parse_iteration_args(texts: list[str]) -> list[tuple[int, int]]:
    """``--skip-iterations A-B`` (or ``A``) values as (first, last) pairs; a bad one is a ConfigError
    naming it."""
    pairs = []
    for text in texts:
        first, sep, last = text.strip().partition("-")
        try:
            pair = (int(first), int(last) if sep else int(first))
        except ValueError:
            raise config_mod.ConfigError(f"--skip-iterations {text!r}: expected A-B (iterations, both "
                                         f"included) or A") from None
        if not 1 <= pair[0] <= pair[1]:
            raise config_mod.ConfigError(f"--skip-iterations {text!r}: need 1 <= A <= B")
        pairs.append(pair)
    return pairs


def resolve(run: RunDir, iterations: list[tuple[int, int]], tag: str | None = None,
            consumed_override: int | None = None, also_skipped: list[tuple[int, int]] = ()) -> list[IterationSkip]:
    """The sample ranges of ``iterations`` for a run resuming from checkpoint ``tag`` (default: latest; a
    run without a checkpoint starts at step 0, sample 0). ``consumed_override``: the data position a
    ``--set-consumed-samples`` of the same surgery gives the resume. ConfigError (one line) for iterations
    the run has trained already or a checkpoint that records no data position."""
    from trainer.control import read_skip_ranges

    if not iterations:
        return []
    step, consumed, train, ranges = _resume_point(run, tag)
    if consumed_override is not None:
        consumed = consumed_override
    try:
        ranges = [*ranges, *read_skip_ranges(run.root), *also_skipped]
    except ValueError as exc:
        raise config_mod.ConfigError(f"--skip-iterations: {exc}") from None
    skips = []
    for first, last in iterations:
        try:
            start, end = iteration_sample_range(first, last, global_batch_size=train.global_batch_size,
                                                resume_step=step, resume_consumed=consumed, skip_ranges=ranges,
                                                rampup=train.rampup_batch_size)
        except ValueError as exc:
            raise config_mod.ConfigError(f"--skip-iterations {first}-{last}: {exc}") from None
        skips.append(IterationSkip(first, last, start, end))
    return skips


def _resume_point(run: RunDir, tag: str | None) -> tuple[int, int, config_mod.TrainConfig, list[tuple[int, int]]]:
    """(step, consumed_samples, the batch sizes' ``[train]`` config, the checkpoint's skip ranges) the run resumes
    with."""
    from bigops.checkpoint.layout import open_checkpoint

    if tag is None and run.latest_tag() is None:
        if not run.run_toml.is_file():
            raise config_mod.ConfigError(f"{run.root} has no {Path(run.run_toml).name}: not a run directory")
        return 0, 0, load_run_config(run).train, []
    ref = open_checkpoint(run.root, tag)
    consumed = ref.manifest.get("consumed_samples")
    if not isinstance(consumed, int) or isinstance(consumed, bool) or ref.step is None:
        raise config_mod.ConfigError(f"--skip-iterations: checkpoint {ref.tag} records no step or consumed_samples: "
                                     f"the samples of an iteration are unknown; give --skip-range in samples")
    return ref.step, consumed, ref.config.train, skip_ranges_of(ref.manifest)
