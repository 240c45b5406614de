"""The comparison table: one row per run (label, status, hyper-parameters, metrics), written as
``comparison.csv`` and ``comparison.md``. A key a run does not report is ``n/a`` (blank in the
CSV), never an error.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rlaif.comparison.runs import RunRecord, _override_dict, varied_overrides
from rlaif.io import atomic_write_text

# Table columns: (summary key, heading in comparison.md, key of its standard error or None).
METRICS: list[tuple[str, str, str | None]] = [
    ("eval/gold_reward_policy", "gold policy", "eval/gold_reward_policy_sem"),
    ("eval/gold_reward_reference", "gold reference", "eval/gold_reward_reference_sem"),
    ("eval/gold_reward_gain", "gain", None),
    ("eval/win_rate", "win rate", None),
    ("eval/lc_win_rate", "LC win rate", None),
    ("eval/heldout_win_rate", "held-out win rate", None),
    ("eval/kl", "KL", None),
    ("eval/length_policy", "length policy", None),
    ("eval/length_reference", "length reference", None),
    ("train/judge_calls", "judge calls", None),
    ("train/generated_tokens", "generated tokens", None),
    ("time/train_s", "train s", None),
    ("time/total_s", "total s", None),
]
# Hyper-parameters shown whenever a run's config has them (plus whatever the sweep varied).
HPARAMS = ("optimizer.beta", "optimizer.target_kl", "optimizer.kl_coef", "optimizer.learning_rate", "seed")


# ---------------------------------------------------------------------------------------------
# The table


def hparam_keys(runs: Sequence[RunRecord]) -> list[str]:
    """HPARAMS present in some run, then the other keys the sweep varied (bar the optimizer choice)."""
    keys = [k for k in HPARAMS if any(k in r.config for r in runs)]
    keys += [k for k in varied_overrides(runs) if k not in keys and k != "optimizer"]
    return keys


def _hparam(run: RunRecord, key: str) -> Any:
    if key in run.config:
        return run.config[key]
    if "." not in key and f"{key}.name" in run.config:  # a group choice, e.g. judge=pairwise
        return run.config[f"{key}.name"]
    return _override_dict(run.overrides).get(key)


def comparison_table(runs: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One row per run: label, status, optimizer, hyper-parameters, then METRICS (and their sems).

    Values are raw (None where missing); keys are the summary / config keys, so a row reads back
    into the run's own files. ``run`` is the folder path.
    """
    hp = hparam_keys(runs)
    rows = []
    for r in runs:
        row: dict[str, Any] = {"label": r.label, "status": "ok" if r.complete else f"incomplete: {r.problem}",
                               "optimizer": r.optimizer}
        row.update({k: _hparam(r, k) for k in hp})
        for key, _, sem in METRICS:
            row[key] = r.metric(key)
            if sem:
                row[sem] = r.metric(sem)
        row["run"] = str(r.path)
        rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    a = abs(v)
    if isinstance(v, int) or (float(v).is_integer() and a < 1e15):
        return f"{v:.0f}"
    if a >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 1 else f"{v:.3f}" if a >= 1e-3 else f"{v:.2e}"


def markdown_table(runs: Sequence[RunRecord], rows: list[dict[str, Any]] | None = None) -> str:
    """comparison.md: columns no run reports are dropped and named under the table."""
    rows = rows if rows is not None else comparison_table(runs)
    hp = hparam_keys(runs)
    cols: list[tuple[str, Callable[[dict], str]]] = [
        ("run", lambda row: row["label"]), ("optimizer", lambda row: row["optimizer"])]
    cols += [(k.removeprefix("optimizer."), lambda row, k=k: _fmt(row[k])) for k in hp]
    absent = []
    for key, heading, sem in METRICS:
        if all(row[key] is None for row in rows):
            absent.append(f"{heading} (`{key}`)")
            continue
        if sem and any(row[sem] is not None for row in rows):
            cols.append((heading, lambda row, k=key, s=sem: _fmt(row[k]) + (
                f" ± {_fmt(row[s])}" if row[k] is not None and row[s] is not None else "")))
        else:
            cols.append((heading, lambda row, k=key: _fmt(row[k])))
    if any(row["status"] != "ok" for row in rows):
        cols.append(("status", lambda row: row["status"]))

    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(esc(f(row)) for _, f in cols) + " |" for row in rows]
    done = sum(row["status"] == "ok" for row in rows)
    lines += ["", f"{done} of {len(rows)} runs complete. Folders: "
              + ", ".join(f"{row['label']} = `{row['run']}`" for row in rows) + "."]
    if absent:
        lines.append("Not reported by any run: " + ", ".join(absent) + ".")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in rows])
    atomic_write_text(path, buf.getvalue())
