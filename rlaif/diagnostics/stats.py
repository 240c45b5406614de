"""Small statistics used by the judge diagnostics, written out so that scipy is not a dependency.

Every function here takes plain sequences, skips nothing silently (callers filter invalid items
first and count them) and returns ``None`` where the statistic is undefined (too few items, zero
variance, chance agreement of 1) instead of a made-up number or NaN.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np


def is_number(x) -> bool:
    """True for a finite real number (bools count: True is 1, False is 0)."""
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def average_ranks(xs: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span (as Spearman needs)."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        mean_rank = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = mean_rank
        i = j + 1
    return ranks


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation; None with fewer than 2 items or when either side is constant."""
    if len(xs) != len(ys):
        raise ValueError(f"pearson: {len(xs)} x values but {len(ys)} y values")
    if len(xs) < 2:
        return None
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    if denom == 0.0:
        return None
    return float((x * y).sum() / denom)


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation: Pearson correlation of average ranks (handles ties)."""
    if len(xs) != len(ys):
        raise ValueError(f"spearman: {len(xs)} x values but {len(ys)} y values")
    return pearson(average_ranks(xs), average_ranks(ys))


def cohen_kappa(xs: Sequence[Hashable], ys: Sequence[Hashable]) -> float | None:
    """Cohen's kappa between two raters' labels of the same items: (p_o - p_e) / (1 - p_e).

    None when there are no items or when chance agreement p_e is 1 (both raters always give the
    same single label), where kappa is 0/0.
    """
    if len(xs) != len(ys):
        raise ValueError(f"cohen_kappa: {len(xs)} labels from one rater but {len(ys)} from the other")
    n = len(xs)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(xs, ys, strict=True)) / n
    cx, cy = Counter(xs), Counter(ys)
    p_e = sum(cx[c] * cy[c] for c in cx) / (n * n)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


def fit_logistic(x: Sequence[float], y: Sequence[float], l2: float = 1e-2, max_iter: int = 100,
                 tol: float = 1e-10) -> tuple[float, float]:
    """Fit P(y=1 | x) = sigmoid(b0 + b1 * x) by Newton's method (IRLS); returns (b0, b1).

    ``y`` may be fractional in [0, 1] (0.5 for a tie): the cross-entropy stays convex. A small L2
    penalty ``l2`` on the slope b1 only keeps the fit finite under perfect separation in x (e.g. a
    judge that always prefers the longer answer) without shrinking b0 towards 0. When every y is 1
    (or every y is 0) the maximum-likelihood intercept is +inf (-inf) and is returned as such,
    with b1 = 0.
    """
    xv, yv = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xv.shape != yv.shape or xv.ndim != 1:
        raise ValueError(f"fit_logistic: x and y must be 1-D and equally long, got {xv.shape} and {yv.shape}")
    if len(xv) == 0:
        raise ValueError("fit_logistic: no data")
    if np.any((yv < 0) | (yv > 1)) or not np.all(np.isfinite(xv)):
        raise ValueError("fit_logistic: y must lie in [0, 1] and x must be finite")
    if np.all(yv == 1.0) or np.all(yv == 0.0):
        return (math.inf if yv[0] == 1.0 else -math.inf), 0.0
    X = np.stack([np.ones_like(xv), xv], axis=1)
    beta = np.zeros(2)
    penalty = np.array([0.0, l2])

    def loss(b: np.ndarray) -> float:
        z = X @ b
        # -[y log s + (1-y) log(1-s)] = log(1+e^z) - y z
        return float(np.sum(np.logaddexp(0.0, z) - yv * z) + 0.5 * float(penalty @ (b * b)))

    current = loss(beta)
    for _ in range(max_iter):
        p = _sigmoid(X @ beta)
        grad = X.T @ (p - yv) + penalty * beta
        hess = (X * (p * (1 - p))[:, None]).T @ X + np.diag(penalty + 1e-12)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:  # damped Newton: never increase the (convex) loss
            candidate = beta - t * step
            new = loss(candidate)
            if new <= current or t < 1e-8:
                break
            t *= 0.5
        beta, done = candidate, abs(current - new) < tol * (1 + abs(current))
        current = new
        if done:
            break
    return float(beta[0]), float(beta[1])


def expected_calibration_error(probs: Sequence[float], labels: Sequence[float], bins: int = 10) -> float | None:
    """ECE of probabilities against outcomes, equal-width bins over [0, 1].

    ECE = sum_b (n_b / n) * |mean(prob in b) - mean(label in b)|, where a probability p falls in
    bin min(floor(p * bins), bins - 1). Labels are 1/0 (or 0.5 for a tie). None without items.
    """
    if len(probs) != len(labels):
        raise ValueError(f"expected_calibration_error: {len(probs)} probabilities but {len(labels)} labels")
    if bins < 1:
        raise ValueError(f"expected_calibration_error: bins must be >= 1, got {bins}")
    n = len(probs)
    if n == 0:
        return None
    sums: dict[int, list[float]] = {}
    for p, y in zip(probs, labels, strict=True):
        b = min(int(p * bins), bins - 1)
        s = sums.setdefault(b, [0.0, 0.0, 0.0])
        s[0] += p
        s[1] += y
        s[2] += 1
    return sum(abs(sp - sy) / n for sp, sy, _ in sums.values())
