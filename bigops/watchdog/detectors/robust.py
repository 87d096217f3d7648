"""Robust statistics of a recent window: median and MAD, insensitive to the outliers we look for."""

from __future__ import annotations

import bisect
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


class SortedWindow:
    """The last ``size`` finite values, kept in arrival order and sorted (bisect): the median is O(1) and the
    MAD O(n) without a sort, so a detector fed one record at a time stays cheap. JSON state: the values."""

    def __init__(self, size: int, values: Iterable[float] = ()):
        self.size = size
        self.values: deque[float] = deque()
        self.sorted: list[float] = []
        for v in values:
            self.add(v)

    def add(self, value: float) -> None:
        if not math.isfinite(value):
            return
        self.values.append(value)
        bisect.insort(self.sorted, value)
        if len(self.values) > self.size:
            old = self.values.popleft()
            del self.sorted[bisect.bisect_left(self.sorted, old)]

    def __len__(self) -> int:
        return len(self.values)

    def median(self) -> float:
        s, n = self.sorted, len(self.sorted)
        if not n:
            return math.nan
        return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2

    def mad(self) -> float:
        """Median absolute deviation from the median: the k smallest |v - m| found by walking outwards from
        the median in the sorted values (two pointers), no sort."""
        s, n = self.sorted, len(self.sorted)
        if not n:
            return math.nan
        m = self.median()
        hi = bisect.bisect_left(s, m)
        lo = hi - 1
        devs = []
        for _ in range(n // 2 + 1):
            if lo >= 0 and (hi >= n or m - s[lo] <= s[hi] - m):
                devs.append(m - s[lo])
                lo -= 1
            else:
                devs.append(s[hi] - m)
                hi += 1
        return devs[n // 2] if n % 2 else (devs[n // 2 - 1] + devs[n // 2]) / 2

    def stats(self) -> tuple[float, float]:
        return self.median(), self.mad()

    def to_json(self) -> list[float]:
        return list(self.values)
