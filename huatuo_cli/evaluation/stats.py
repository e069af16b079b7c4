"""The statistics of an evaluation: Wilson intervals for an accuracy, and for two models on the same
items the paired difference (Wald interval for paired proportions), agreement and McNemar's exact test."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of correct/n (fractions); (0, 1) when n is 0."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (binomial, p = 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = float(sum(math.comb(n, i) for i in range(k + 1))) / float(2 ** n)
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Paired:
    n: int
    only_a: int          # A right, B wrong
    only_b: int          # A wrong, B right
    same_choice: int     # both extracted the same letter

    @property
    def difference(self) -> float:
        """accuracy(A) - accuracy(B), a fraction."""
        return (self.only_a - self.only_b) / self.n if self.n else 0.0

    @property
    def ci95(self) -> tuple[float, float]:
        if not self.n:
            return (-1.0, 1.0)
        d = self.difference
        se = math.sqrt(max(0.0, self.only_a + self.only_b - (self.only_a - self.only_b) ** 2 / self.n)) / self.n
        return (max(-1.0, d - Z95 * se), min(1.0, d + Z95 * se))

    @property
    def agreement(self) -> float:
        return self.same_choice / self.n if self.n else 0.0

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.only_a, self.only_b)
