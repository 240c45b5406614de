"""Compare the runs of a sweep: one table row and one plotted point per run.

``rlaif-compare <sweep folder>`` (or several run folders, or any folder above them) finds the run
folders (those holding ``summary.json``; folders Hydra made whose ``summary.json`` is missing are
listed as incomplete), labels each run by the overrides that differ between runs
("ppo target_kl=4"), and writes to ``<sweep>/comparison/``:

- ``comparison.csv`` and ``comparison.md``: gold reward (± sem) of policy and reference, gain,
  judge win rate (plain, length-controlled, held-out), KL to the reference, lengths, training
  budget and time, per run;
- ``gold_vs_kl.png`` (the reward-KL frontier, Rafailov et al. 2023 Fig. 2), ``winrate_vs_kl.png``,
  ``length_drift.png``, ``train_vs_heldout.png`` (reward over-optimisation, Gao et al. 2022) and
  ``training_curves.png`` (when runs left a ``train_history.jsonl``);
- ``comparison.json``: the rows and the paths of the plots.

The same functions serve the CLI, ``notebooks/compare.ipynb`` and the Hydra callback
``SweepSummary`` (writes the comparison when a multirun ends). This module only reads run
folders: it never reruns, retrains or edits a run. A key a run does not report is shown as
``n/a`` (blank in the CSV), never an error.

Reading run folders, the table and the plots live in ``rlaif.comparison`` (``runs``, ``table``,
``plots``); this module puts them together and re-exports their public names.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from rlaif.comparison.plots import (
    COLOURS,
    MARKERS,
    PLOTS,
    REFERENCE_STYLE,
    WHY_SKIPPED,
    optimizer_styles,
    plot_gold_vs_kl,
    plot_length_drift,
    plot_train_vs_heldout,
    plot_training_curves,
    plot_winrate_vs_kl,
)
from rlaif.comparison.runs import (
    RUN_CONTENTS,
    NoRunsError,
    RunRecord,
    find_run_dirs,
    latest_sweep,
    load_runs,
    make_labels,
    read_run,
    varied_overrides,
)
from rlaif.comparison.table import HPARAMS, METRICS, comparison_table, hparam_keys, markdown_table, write_csv
from rlaif.io import atomic_write_text

__all__ = [
    "COLOURS", "HPARAMS", "MARKERS", "METRICS", "PLOTS", "REFERENCE_STYLE", "RUN_CONTENTS", "WHY_SKIPPED",
    "NoRunsError", "RunRecord", "SweepSummary", "comparison_table", "find_run_dirs", "hparam_keys", "latest_sweep",
    "load_runs", "main", "make_labels", "markdown_table", "optimizer_styles", "plot_gold_vs_kl", "plot_length_drift",
    "plot_train_vs_heldout", "plot_training_curves", "plot_winrate_vs_kl", "read_run", "varied_overrides",
    "write_comparison", "write_csv",
]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Everything at once: CLI, notebook and callback


def write_comparison(sweep: str | Path | Sequence[str | Path], out: str | Path | None = None) -> dict[str, Any]:
    """Read the runs under ``sweep`` (a folder, or a list of folders) and write the table, the
    plots and comparison.json to ``out`` (default ``<sweep>/comparison``). Returns what
    comparison.json holds, plus the markdown table under ``markdown``."""
    paths = [sweep] if isinstance(sweep, (str, Path)) else list(sweep)
    runs = load_runs(paths)
    if out is None:
        base = Path(paths[0]) if len(paths) == 1 else Path(os.path.commonpath([Path(p).resolve() for p in paths]))
        out = base / "comparison"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = comparison_table(runs)
    md = markdown_table(runs, rows)
    write_csv(rows, out / "comparison.csv")
    atomic_write_text(out / "comparison.md", md)
    plots, skipped = {}, {}
    for name, fn in PLOTS.items():
        fig = fn(runs)
        if fig is None:
            skipped[name] = WHY_SKIPPED[name]
            (out / f"{name}.png").unlink(missing_ok=True)  # a stale plot from an earlier call would mislead
            continue
        tmp = out / f".{name}.png.tmp"
        fig.savefig(tmp, dpi=120, format="png")
        os.replace(tmp, out / f"{name}.png")  # a reader never sees half a PNG while the callback rewrites it
        plots[name] = str(out / f"{name}.png")
    result = {"sweep": [str(p) for p in paths], "out": str(out), "runs": rows, "plots": plots,
              "skipped_plots": skipped, "table": {"csv": str(out / "comparison.csv"), "md": str(out / "comparison.md")},
              "complete": sum(r.complete for r in runs), "incomplete": sum(not r.complete for r in runs)}
    atomic_write_text(out / "comparison.json", json.dumps(result, indent=2, default=str) + "\n")
    return {**result, "markdown": md}


def main(argv: list[str] | None = None) -> int:
    """``rlaif-compare SWEEP [RUN ...] [--out DIR]``: exit 0 on success, 2 when no runs were found."""
    ap = argparse.ArgumentParser(
        prog="rlaif-compare",
        description="Compare the runs of a sweep: a table (CSV, markdown) and plots of gold reward, judge "
                    "win rate, KL and length, one row/point per run.")
    ap.add_argument("paths", nargs="+", type=Path,
                    help="a sweep folder (outputs/multirun/<date>/<time>), a folder above run folders, or run folders")
    ap.add_argument("--out", type=Path, default=None, help="where to write (default: <sweep folder>/comparison)")
    args = ap.parse_args(argv)
    try:
        result = write_comparison(args.paths if len(args.paths) > 1 else args.paths[0], args.out)
    except NoRunsError as e:
        print(f"rlaif-compare: {e}", file=sys.stderr)
        return 2
    print(result["markdown"])
    print(f"Wrote {result['table']['csv']}, {result['table']['md']} and {Path(result['out']) / 'comparison.json'}")
    for name, p in result["plots"].items():
        print(f"  {name}: {p}")
    for name, why in result["skipped_plots"].items():
        print(f"  {name}: not drawn ({why})")
    return 0


class SweepSummary(Callback):
    """Hydra callback: write the comparison into the sweep folder when a multirun ends.

    Enable in conf/config.yaml (``hydra.callbacks.sweep_summary._target_: rlaif.compare.SweepSummary``).
    Hydra's basic sweeper re-raises a failed job's error after the last job and then skips
    ``on_multirun_end``; so once a job has failed, the comparison is also rewritten after each
    later job, and the table is complete (failed runs listed) either way. Never raises.
    """

    def __init__(self, out: str | None = None) -> None:
        self.out = out  # None: <sweep dir>/comparison
        self._failed = False

    def _write(self, sweep_dir: str | Path | None) -> dict[str, Any] | None:
        if not sweep_dir:
            log.warning("rlaif-compare: no hydra.sweep.dir in the config; no comparison written")
            return None
        try:
            result = write_comparison(Path(sweep_dir), self.out)
        except NoRunsError:
            log.warning("rlaif-compare: no run of the sweep in %s finished; no comparison written", sweep_dir)
            return None
        except Exception as e:  # noqa: BLE001 - a summary must never turn a finished sweep into a failure
            log.warning("rlaif-compare: could not compare the runs in %s: %s: %s", sweep_dir, type(e).__name__, e)
            return None
        log.info("Sweep comparison (%d complete, %d incomplete) written to %s:\n%s", result["complete"],
                 result["incomplete"], result["table"]["md"], result["markdown"])
        if not result["complete"]:
            log.warning("rlaif-compare: no run of the sweep in %s finished", sweep_dir)
        return result

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        self._write(_select(config, "hydra.sweep.dir"))

    def on_job_end(self, config, job_return=None, **kwargs: Any) -> None:
        try:
            from hydra.core.utils import JobStatus

            mode = _select(config, "hydra.mode")
            if getattr(mode, "name", mode) != "MULTIRUN":
                return
            self._failed |= getattr(job_return, "status", None) == JobStatus.FAILED
            if self._failed:
                self._write(_select(config, "hydra.sweep.dir"))
        except Exception as e:  # noqa: BLE001
            log.warning("rlaif-compare: %s: %s", type(e).__name__, e)


def _select(config: Any, key: str) -> Any:
    try:
        from omegaconf import OmegaConf

        return OmegaConf.select(config, key, default=None)
    except Exception:  # noqa: BLE001 - a config whose interpolation fails to resolve
        return None


if __name__ == "__main__":
    sys.exit(main())
