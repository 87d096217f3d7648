"""Robust statistics of a recent window: median and MAD, insensitive to the outliers we look for."""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Iterable

MAD_TO_SIGMA = 1.4826  # MAD x this = sigma for normal data


def median_mad(values: Iterable[float]) -> tuple[float, float]:
    data = [v for v in values if math.isfinite(v)]
    if not data:
        return math.nan, math.nan
    median = statistics.median(data)
    return median, statistics.median(abs(v - median) for v in data)


class Window:
    """The last ``size`` finite values."""

    def __init__(self, size: int):
        self.values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        if math.isfinite(value):
            self.values.append(value)

    def __len__(self) -> int:
        return len(self.values)

    def stats(self) -> tuple[float, float]:
        return median_mad(self.values)
