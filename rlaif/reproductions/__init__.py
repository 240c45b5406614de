"""Published experiments as configs with a checked expected result.

``rlaif experiment=paper/<name>_cpu`` (or ``paper/<name>`` at full scale) composes a study: one
or more runs of the pipeline (``study.runs``: a name and the overrides of each) and, where the
paper needs more than run summaries, an analysis over them (``study.analysis``). The study's
``reproduction`` section names the paper and the check; the check reads the runs and the
analysis, compares what was measured with what the paper leads one to expect, and the study
folder gets ``summary.json`` with ``reproduction/check``, ``reproduction/passed`` and each
measured value beside the expected one, a table and plots. A failed check is reported as
failed; it never raises and is never hidden.

- ``rlaif.reproductions.study``: the runner (compose each member run, run it, resume, report);
- ``rlaif.reproductions.checks``: the checks, one function per paper claim (unit-tested on
  synthetic metrics in tests/test_reproduction_checks.py);
- ``rlaif.reproductions.registry``: the registry of papers (config names, arXiv ids, claims).
"""

from rlaif.reproductions.checks import CHECKS, Check, CheckResult, Criterion
from rlaif.reproductions.registry import REGISTRY, Paper

__all__ = ["CHECKS", "REGISTRY", "Check", "CheckResult", "Criterion", "Paper"]
