"""The checks of published claims, one module per paper (``checks/<paper>.py``), each
registering its functions in ``CHECKS`` with ``@check("name")``; ``checks/base.py`` has the
result types and shared helpers. Every module in this package is imported here, so a new paper's
module needs no other registration."""

import importlib
import pkgutil

from rlaif.reproductions.checks.base import (
    CHECKS,
    Check,
    CheckResult,
    Criterion,
    StudyData,
    check,
    frontier_at,
    missing,
    run_check,
    spearman,
)

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["CHECKS", "Check", "CheckResult", "Criterion", "StudyData", "check", "frontier_at", "missing", "run_check",
           "spearman"]
