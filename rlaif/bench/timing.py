"""Clocks for the benchmark: synchronised timing, alternating runs (best of N), the table row
record, and the matmul peak that the ``peak`` column divides by.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import torch


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn):
    _sync()
    t = time.perf_counter()
    out = fn()
    _sync()
    return time.perf_counter() - t, out


def alternate(fns: dict, repeats: int) -> dict:
    """Best time and last result of each callable, run in turn ``repeats`` times (first listed first)."""
    best, results = {k: math.inf for k in fns}, {}
    for _ in range(repeats):
        for name, fn in fns.items():
            dt, results[name] = _timed(fn)
            best[name] = min(best[name], dt)
    return {k: (best[k], results[k]) for k in fns}


class Done(NamedTuple):
    """What one run of a row did: ``amount`` of ``unit`` (tokens, samples, steps) gives the rates;
    ``flops`` over ``peak`` FLOP/s gives the achieved fraction of the machine's peak."""

    unit: str | None = None
    amount: float | None = None
    flops: float | None = None
    peak: float | None = None


NOTHING_COUNTED = Done()  # a row with a time only


def row(name: str, what: str, rlaif_s: float, baseline_s: float | None = None, done: Done = NOTHING_COUNTED,
        note: str = "") -> dict:
    """One table row: rlaif's time beside the baseline's, with rates and peak fraction from ``done``."""
    unit, amount, flops, peak = done
    return {"name": name, "what": what, "rlaif_s": rlaif_s, "baseline_s": baseline_s, "unit": unit,
            "rlaif_rate": amount / rlaif_s if amount else None,
            "baseline_rate": amount / baseline_s if amount and baseline_s else None,
            "ratio": baseline_s / rlaif_s if baseline_s else None,
            "peak_fraction": flops / rlaif_s / peak if flops and peak else None, "note": note}


def matmul_gflops(dtype, n: int, reps: int = 3) -> float:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = torch.randn(n, n, device=dev).to(dtype), torch.randn(n, n, device=dev).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b)[0] for _ in range(reps))
    return 2 * n**3 / best / 1e9
