"""The machinery of checks (one module per paper beside this one registers its own): each reads a study's runs (and its analysis) and says, per
criterion, what was measured, what the paper leads one to expect, and whether it holds.

A check is ``fn(study: StudyData, params: dict) -> CheckResult``, registered under a name in
``CHECKS`` with ``@check("name")``; a study names it in ``reproduction.check`` and gives its
thresholds in ``reproduction.expected`` (shown beside the measured values, so a reader sees what
"passed" meant). A check never raises on missing metrics: a criterion that cannot be measured
fails with the reason. tests/test_reproduction_checks.py feeds each check synthetic metrics on
which it must pass and others on which it must fail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif.comparison.runs import RunRecord
from rlaif.diagnostics import stats


@dataclass
class Criterion:
    """One measured claim: ``measured`` against ``expected`` (a readable condition)."""

    name: str  # short key: reproduction/<name>/measured, .../expected, .../passed
    claim: str  # what it says, in words
    measured: Any  # a number (or a short list/str); None when it could not be measured
    expected: str  # the condition, e.g. ">= -0.02" or "decreasing"
    passed: bool
    why: str = ""  # for a failure that was not a measurement (a missing run or metric)


@dataclass
class CheckResult:
    check: str  # the claim checked, in one sentence
    criteria: list[Criterion]
    values: dict[str, Any] = field(default_factory=dict)  # further measured values, reported (not checked)

    @property
    def passed(self) -> bool:
        return bool(self.criteria) and all(c.passed for c in self.criteria)

    def summary(self) -> dict[str, Any]:
        """Flat summary.json / W&B keys."""
        out: dict[str, Any] = {"reproduction/check": self.check, "reproduction/passed": self.passed,
                               "reproduction/criteria_passed": sum(c.passed for c in self.criteria),
                               "reproduction/criteria": len(self.criteria)}
        for c in self.criteria:
            out[f"reproduction/{c.name}/measured"] = c.measured
            out[f"reproduction/{c.name}/expected"] = c.expected
            out[f"reproduction/{c.name}/passed"] = c.passed
            if c.why:
                out[f"reproduction/{c.name}/why"] = c.why
        for k, v in self.values.items():
            out[f"reproduction/value/{k}"] = v
        return out

    def lines(self) -> list[str]:
        """The readable report: one line per criterion."""
        rows = [f"{'PASS' if self.passed else 'FAIL'}: {self.check}"]
        for c in self.criteria:
            m = fmt_value(c.measured)
            rows.append(f"  [{'x' if c.passed else ' '}] {c.claim}: measured {m}, expected {c.expected}"
                        + (f" ({c.why})" if c.why else ""))
        return rows


@dataclass
class StudyData:
    """What a check reads: the member runs by name, the analysis's values, the study folder."""

    runs: dict[str, RunRecord]
    analysis: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None

    def metric(self, run: str, key: str) -> float | None:
        r = self.runs.get(run)
        return None if r is None or not r.complete else r.metric(key)

    def matching(self, prefix: str) -> list[tuple[str, RunRecord]]:
        """Complete runs whose name starts with ``prefix``, in the study's order."""
        return [(n, r) for n, r in self.runs.items() if n.startswith(prefix) and r.complete]


Check = Callable[[StudyData, dict], CheckResult]
CHECKS: dict[str, Check] = {}


def check(name: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS[name] = fn
        return fn
    return register


def run_check(name: str, study: StudyData, params: dict) -> CheckResult:
    """The named check on ``study``; an error inside a check is a failed check saying so."""
    if name not in CHECKS:
        raise KeyError(f"reproduction.check: unknown check '{name}'; known: {', '.join(sorted(CHECKS))}")
    try:
        return CHECKS[name](study, dict(params))
    except Exception as e:  # noqa: BLE001 - a crashed check is reported as a failure, with its error
        return CheckResult(check=name, criteria=[Criterion("check_ran", "the check ran", None, "no error", False,
                                                           why=f"{type(e).__name__}: {e}")])


# ---------------------------------------------------------------------------------------------
# Helpers


def fmt_value(v: Any) -> str:
    """A measured value as the reports show it: 4 significant digits, lists in brackets, n/a."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    return "n/a" if v is None else str(v)


def missing(name: str, claim: str, expected: str, why: str) -> Criterion:
    return Criterion(name, claim, None, expected, False, why=why)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan for fewer than 2 points, a constant
    side or lists of different lengths (a check compares it with a threshold, so nan fails)."""
    if len(x) != len(y) or len(x) < 2:
        return float("nan")
    rho = stats.spearman(list(x), list(y))
    return float("nan") if rho is None else rho


def frontier_at(points: Sequence[tuple[float, float]], x: float, origin: tuple[float, float] | None = None) -> float:
    """The upper frontier of ``points`` (KL, reward) at ``x``: the best reward reachable with at
    most that KL, interpolated linearly between the frontier's corners (from ``origin``, the
    starting policy at KL 0, where given), flat beyond the last point."""
    pts = sorted(points)
    if origin is not None:
        pts = [origin] + pts
    corners: list[tuple[float, float]] = []  # non-decreasing in reward
    for kl, r in pts:
        if corners and r <= corners[-1][1]:
            continue
        corners.append((kl, r))
    if not corners:
        return float("nan")
    if x <= corners[0][0]:
        return corners[0][1] if origin is None else corners[0][1]
    for (x0, y0), (x1, y1) in zip(corners, corners[1:], strict=False):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else max(y0, y1)
    return corners[-1][1]
