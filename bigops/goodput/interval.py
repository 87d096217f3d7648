"""The checkpoint interval that maximises goodput for a measured failure rate and save cost (pure).

Saving often costs save time; saving rarely costs the work redone after each failure. With a save cost
``delta`` and a mean time between failures ``M`` (both in seconds):

- Young (1974): ``tau = sqrt(2 * delta * M)`` — the first-order optimum;
- Daly (2006, "A higher order estimate of the optimum checkpoint interval for restart dumps", eq. 37):
  ``tau = sqrt(2 delta M) * (1 + sqrt(delta / 2M) / 3 + (delta / 2M) / 9) - delta`` for ``delta < 2M``, else
  ``tau = M`` — better when saves are not small against the MTBF (a slow filesystem, a fragile run).

``tau`` is compute time between saves; divided by the run's usual step time it is a ``train.save_interval``
in steps. :func:`advise` compares it with the configured one and suggests a change only when they are far
apart (more than ``FAR`` times either way): the optimum is flat, and a few failures measure ``M`` loosely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FAR = 2.0
"""Suggest another interval when the configured one is more than FAR x or less than 1/FAR x the optimum."""


def young(save_s: float, mtbf_s: float) -> float:
    """Young's optimum compute time between saves (seconds)."""
    return math.sqrt(2.0 * save_s * mtbf_s)


def daly(save_s: float, mtbf_s: float) -> float:
    """Daly's higher-order optimum compute time between saves (seconds)."""
    if save_s >= 2.0 * mtbf_s:
        return mtbf_s
    x = save_s / (2.0 * mtbf_s)
    return math.sqrt(2.0 * save_s * mtbf_s) * (1.0 + math.sqrt(x) / 3.0 + x / 9.0) - save_s


@dataclass(frozen=True)
class Advice:
    failures: int
    mtbf_s: float | None
    """Wall seconds per failure (None: no failure yet, nothing to optimise against)."""
    save_s: float | None
    """The median save's seconds."""
    step_s: float | None
    configured_steps: int | None
    young_s: float | None = None
    daly_s: float | None = None
    optimal_steps: int | None = None
    """Daly's interval in steps (at least 1)."""
    suggest: bool = False
    """The configured interval is more than FAR x off the optimum."""
    reason: str = ""


def advise(*, failures: int, wall_s: float, save_s: float | None, step_s: float | None,
           configured_steps: int | None) -> Advice:
    """The optimum interval for ``failures`` in ``wall_s`` seconds, a save of ``save_s`` and steps of
    ``step_s``, against ``configured_steps`` (``train.save_interval``; 0 or None: no periodic saves)."""
    base = dict(failures=failures, save_s=save_s, step_s=step_s, configured_steps=configured_steps)
    if failures <= 0 or wall_s <= 0:
        return Advice(mtbf_s=None, reason="no failure yet: no failure rate to optimise the interval against", **base)
    mtbf = wall_s / failures
    if not save_s or not step_s:
        return Advice(mtbf_s=mtbf, reason="no save or no step measured yet", **base)
    y, d = young(save_s, mtbf), daly(save_s, mtbf)
    optimal = max(1, round(d / step_s))
    if not configured_steps:
        return Advice(mtbf_s=mtbf, young_s=y, daly_s=d, optimal_steps=optimal, suggest=True,
                      reason=f"no periodic saves (train.save_interval 0): every failure loses everything since "
                             f"the launch; set train.save_interval={optimal}", **base)
    ratio = configured_steps / optimal
    far = ratio > FAR or ratio < 1.0 / FAR
    reason = (f"train.save_interval={configured_steps} is {ratio:.2g}x the optimum for a failure every "
              f"{mtbf:.0f} s and {save_s:.2g} s saves: set train.save_interval={optimal}" if far else
              f"train.save_interval={configured_steps} is within {FAR:g}x of the optimum ({optimal})")
    return Advice(mtbf_s=mtbf, young_s=y, daly_s=d, optimal_steps=optimal, suggest=far, reason=reason, **base)
