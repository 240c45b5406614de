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
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.experimental.callback import Callback

from rlaif.io import atomic_write_text

if TYPE_CHECKING:  # matplotlib loads on the first plot: `rlaif` imports this module for the callback
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

RUN_CONTENTS = ("summary.json (flat metrics), resolved_config.yaml, .hydra/overrides.yaml and "
                "train_history.jsonl, as written by `rlaif` or each job of `rlaif -m ...`")

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

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
REFERENCE_STYLE = {"color": "black", "marker": "*", "markersize": 13, "linestyle": "none"}


class NoRunsError(ValueError):
    """No run folder (a folder holding summary.json or Hydra's .hydra/) under the given paths."""


@dataclass
class RunRecord:
    """One run folder as read from disk. ``complete`` runs have a ``summary.json``."""

    path: Path  # the run folder
    name: str  # its path relative to the searched folder (e.g. "3" for sweep job 3)
    overrides: list[str] = field(default_factory=list)  # .hydra/overrides.yaml, as Hydra wrote them
    config: dict[str, Any] = field(default_factory=dict)  # resolved_config.yaml, flattened: {"optimizer.beta": 0.1}
    summary: dict[str, Any] = field(default_factory=dict)  # summary.json; non-finite values stored as null
    history: list[dict[str, Any]] = field(default_factory=list)  # train_history.jsonl rows
    problem: str | None = None  # why the run is incomplete; None for a complete run
    label: str = ""  # short readable label; set by load_runs from the overrides that differ

    @property
    def complete(self) -> bool:
        return self.problem is None

    @property
    def optimizer(self) -> str:
        name = self.config.get("optimizer.name") or _override_dict(self.overrides).get("optimizer")
        return str(name) if name else "n/a"

    def metric(self, key: str) -> float | None:
        """A finite number from the summary, or None (missing, null, NaN or not a number)."""
        v = self.summary.get(key)
        if key == "eval/gold_reward_gain" and v is None:  # older runs: derive it
            p, r = self.metric("eval/gold_reward_policy"), self.metric("eval/gold_reward_reference")
            v = None if p is None or r is None else p - r
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        return float(v) if math.isfinite(v) else None


# ---------------------------------------------------------------------------------------------
# Finding and reading run folders


def find_run_dirs(paths: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """(run folder, the searched folder it was found under), in natural order of their paths.

    A run folder holds ``summary.json``; a folder with Hydra's ``.hydra/`` or a
    ``resolved_config.yaml`` but no summary is a run that failed or is still running. Run folders
    are not searched further, nor are symlinks (``policy`` points into the cache).
    """
    found: list[tuple[Path, Path]] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise NoRunsError(f"{p} is not a folder. Give a sweep folder or run folders; a run folder holds {RUN_CONTENTS}.")
        if _is_run_dir(p):
            found.append((p, p.parent))
            continue
        for dirpath, dirnames, _ in os.walk(p):
            d = Path(dirpath)
            if d != p and _is_run_dir(d):
                found.append((d, p))
                dirnames[:] = []
                continue
            dirnames[:] = sorted(n for n in dirnames if n not in ("comparison", "wandb", ".hydra")
                                 and not (d / n).is_symlink())
    seen: set[Path] = set()
    unique = []
    for d, root in found:
        if d.resolve() not in seen:
            seen.add(d.resolve())
            unique.append((d, root))
    return sorted(unique, key=lambda dr: _natural_key(str(dr[0])))


def _is_run_dir(d: Path) -> bool:
    return (d / "summary.json").is_file() or (d / ".hydra").is_dir() or (d / "resolved_config.yaml").is_file()


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def read_run(path: Path, root: Path | None = None) -> RunRecord:
    """Read one run folder; what is missing or unreadable is recorded in ``problem``, never raised."""
    path = Path(path)
    name = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else path.name
    rec = RunRecord(path=path, name=name if name != "." else path.name)
    ov = path / ".hydra" / "overrides.yaml"
    if ov.is_file():
        try:
            rec.overrides = [str(o) for o in (yaml.safe_load(ov.read_text()) or [])]
        except yaml.YAMLError as e:
            log.warning("%s: unreadable overrides (%s)", ov, e)
    for cfg_file in (path / "resolved_config.yaml", path / ".hydra" / "config.yaml"):
        if cfg_file.is_file():
            try:
                rec.config = _flatten(yaml.safe_load(cfg_file.read_text()) or {})
                break
            except yaml.YAMLError as e:
                log.warning("%s: unreadable config (%s)", cfg_file, e)
    summary = path / "summary.json"
    if not summary.is_file():
        if (path / "gate_failed.json").is_file():
            rec.problem = "stopped by the judge gate (gate_failed.json)"
        else:
            rec.problem = "no summary.json: the run failed or has not finished"
    else:
        try:
            rec.summary = json.loads(summary.read_text())
            if not isinstance(rec.summary, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            rec.summary, rec.problem = {}, f"summary.json unreadable: {e}"
    hist = path / "train_history.jsonl"
    if hist.is_file():
        for i, line in enumerate(hist.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rec.history.append(json.loads(line))
                except ValueError:
                    log.warning("%s line %d is not JSON; skipped", hist, i)
    return rec


def load_runs(paths: str | Path | Sequence[str | Path]) -> list[RunRecord]:
    """Every run folder under ``paths`` (complete or not), labelled. Raises NoRunsError if none."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    dirs = find_run_dirs(paths)
    if not dirs:
        searched = ", ".join(str(Path(p).resolve()) for p in paths)
        raise NoRunsError(f"No run folders found under {searched}. A run folder holds {RUN_CONTENTS}; "
                          "give the sweep folder (e.g. outputs/multirun/<date>/<time>) or the run folders themselves.")
    runs = [read_run(d, root) for d, root in dirs]
    for run, label in zip(runs, make_labels(runs), strict=True):
        run.label = label
    return runs


def latest_sweep(root: str | Path = "outputs/multirun") -> Path:
    """The most recently changed folder under ``root`` that directly holds run folders."""
    root = Path(root)
    parents = {d.parent for d, _ in find_run_dirs([root])} if root.is_dir() else set()
    if not parents:
        raise NoRunsError(f"No sweeps found under {root.resolve()}: run `rlaif -m ...` first, or give the sweep folder.")
    return max(parents, key=lambda d: d.stat().st_mtime)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


# ---------------------------------------------------------------------------------------------
# Labels: the overrides that tell the runs apart


def _override_dict(overrides: list[str]) -> dict[str, str]:
    out = {}
    for o in overrides:
        key, sep, value = o.partition("=")
        key = key.lstrip("+~")
        if sep and not key.startswith("hydra."):
            out[key] = value
    return out


def _short_value(v: str) -> str:
    v = v.strip("'\"")
    if "/" in v.rstrip("/"):  # a path: its last part says enough
        v = v.rstrip("/").rsplit("/", 1)[-1]
    return v if len(v) <= 24 else v[:23] + "…"


def varied_overrides(runs: Sequence[RunRecord]) -> list[str]:
    """Override keys whose value is not the same in every Hydra run (a key missing from one counts).
    Runs without overrides (not launched through Hydra) are left out: they are labelled by folder."""
    dicts = [_override_dict(r.overrides) for r in runs if r.overrides]
    keys: list[str] = []
    for d in dicts:
        keys += [k for k in d if k not in keys]
    return [k for k in keys if len({d.get(k) for d in dicts}) > 1]


def _is_group(runs: Sequence[RunRecord], key: str) -> bool:
    """A config group choice (its node is a mapping in the composed config), not a plain value like seed."""
    if "." in key:
        return False
    if any(key in r.config for r in runs):  # a scalar at the top level
        return False
    return any(k.startswith(f"{key}.") for r in runs for k in r.config) or not any(r.config for r in runs)


def make_labels(runs: Sequence[RunRecord]) -> list[str]:
    """Short labels from the overrides that differ between runs: ``optimizer=ppo
    optimizer.target_kl=4`` becomes "ppo target_kl=4". Runs not told apart that way (no
    overrides, a single run) fall back to their folder name."""
    varied = varied_overrides(runs) if len(runs) > 1 else []
    groups = [k for k in varied if _is_group(runs, k)]  # optimizer=ppo -> "ppo"
    dotted = [k for k in varied if k not in groups]  # optimizer.beta=0.1 -> "beta=0.1", seed=1 -> "seed=1"
    leaves = [k.rsplit(".", 1)[-1] for k in dotted]
    short = {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(dotted, leaves, strict=True)}
    labels = []
    for r in runs:
        d = _override_dict(r.overrides)
        parts = [_short_value(d[k]) for k in groups if k in d]
        parts += [f"{short[k]}={_short_value(d[k])}" for k in dotted if k in d]
        labels.append(" ".join(parts) or r.name)
    counts = {lab: labels.count(lab) for lab in labels}
    return [f"{lab} [{r.name}]" if counts[lab] > 1 and lab != r.name else lab  # still ambiguous: say which folder
            for lab, r in zip(labels, runs, strict=True)]


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


# ---------------------------------------------------------------------------------------------
# Plots: each returns a matplotlib Figure (no pyplot state), or None when no run has the data


def optimizer_styles(runs: Sequence[RunRecord]) -> dict[str, dict[str, str]]:
    """One colour and marker per optimizer, stable for a given set of optimizer names."""
    names = sorted({r.optimizer for r in runs})
    return {n: {"color": COLOURS[i % len(COLOURS)], "marker": MARKERS[i % len(MARKERS)]} for i, n in enumerate(names)}


def _complete_with(runs: Sequence[RunRecord], *keys: str) -> list[RunRecord]:
    return [r for r in runs if r.complete and all(r.metric(k) is not None for k in keys)]


def _annotate(ax, x: float, y: float, text: str) -> None:
    ax.annotate(text, (x, y), xytext=(5, 5), textcoords="offset points", fontsize=8)


def _figure(title: str, xlabel: str, ylabel: str, size=(7.5, 5.2)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _by_optimizer(runs: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    out: dict[str, list[RunRecord]] = {}
    for r in runs:
        out.setdefault(r.optimizer, []).append(r)
    return dict(sorted(out.items()))


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def plot_gold_vs_kl(runs: Sequence[RunRecord]) -> Figure | None:
    """Gold reward (± sem) against KL to the reference; each optimizer's runs joined in KL order."""
    pts = _complete_with(runs, "eval/gold_reward_policy", "eval/kl")
    if not pts:
        return None
    styles = optimizer_styles(runs)
    fig, ax = _figure("Gold reward against KL to the reference (reward-KL frontier)",
                      "KL(policy ‖ reference), nats per response", "gold reward of the policy (mean ± sem)")
    for opt, rs in _by_optimizer(pts).items():
        rs = sorted(rs, key=lambda r: r.metric("eval/kl"))
        xs, ys = [r.metric("eval/kl") for r in rs], [r.metric("eval/gold_reward_policy") for r in rs]
        sems = [r.metric("eval/gold_reward_policy_sem") or 0.0 for r in rs]
        ax.errorbar(xs, ys, yerr=sems if any(sems) else None, linestyle="-", capsize=3, label=opt, **styles[opt])
        for r, x, y in zip(rs, xs, ys, strict=True):
            _annotate(ax, x, y, r.label)
    refs = [r.metric("eval/gold_reward_reference") for r in _complete_with(runs, "eval/gold_reward_reference")]
    if refs:
        ref_sems = [r.metric("eval/gold_reward_reference_sem") or 0.0 for r in _complete_with(runs, "eval/gold_reward_reference")]
        label = "reference policy" + (" (mean over runs)" if len(set(refs)) > 1 else "")
        ax.errorbar([0.0], [_mean(refs)], yerr=[_mean(ref_sems)] if any(ref_sems) else None, capsize=3,
                    label=label, **REFERENCE_STYLE)
    ax.legend(title="optimizer", fontsize=8)
    return fig


def plot_winrate_vs_kl(runs: Sequence[RunRecord]) -> Figure | None:
    """Judge win rate of the policy over the reference against KL; the reference ties itself (0.5 at KL 0)."""
    pts = _complete_with(runs, "eval/win_rate", "eval/kl")
    if not pts:
        return None
    styles = optimizer_styles(runs)
    fig, ax = _figure("Judge win rate against KL to the reference",
                      "KL(policy ‖ reference), nats per response", "judge win rate of policy over reference")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    for opt, rs in _by_optimizer(pts).items():
        rs = sorted(rs, key=lambda r: r.metric("eval/kl"))
        xs, ys = [r.metric("eval/kl") for r in rs], [r.metric("eval/win_rate") for r in rs]
        ax.plot(xs, ys, linestyle="-", label=opt, **styles[opt])
        for r, x, y in zip(rs, xs, ys, strict=True):
            _annotate(ax, x, y, r.label)
    ax.plot([0.0], [0.5], label="reference policy (ties itself)", **REFERENCE_STYLE)
    ax.legend(title="optimizer", fontsize=8)
    return fig


def plot_length_drift(runs: Sequence[RunRecord]) -> Figure | None:
    """Policy minus reference mean response length, one bar per run."""
    pts = _complete_with(runs, "eval/length_policy", "eval/length_reference")
    if not pts:
        return None
    styles = optimizer_styles(runs)
    fig, ax = _figure("Length drift: policy minus reference mean response length", "run",
                      "policy − reference length (tokens)", size=(max(6.0, 1.1 * len(pts) + 3), 5.2))
    drift = [r.metric("eval/length_policy") - r.metric("eval/length_reference") for r in pts]
    xs = list(range(len(pts)))
    ax.bar(xs, drift, color=[styles[r.optimizer]["color"] for r in pts])
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(xs, [r.label for r in pts], rotation=30, ha="right", fontsize=8)
    for x, d, r in zip(xs, drift, pts, strict=True):
        ax.annotate(f"{d:+.1f}\n({r.metric('eval/length_reference'):.0f}→{r.metric('eval/length_policy'):.0f})",
                    (x, d), xytext=(0, 3 if d >= 0 else -3), textcoords="offset points", ha="center",
                    va="bottom" if d >= 0 else "top", fontsize=7)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=styles[o]["color"], label=o) for o in _by_optimizer(pts)], title="optimizer",
              fontsize=8)
    return fig


def plot_train_vs_heldout(runs: Sequence[RunRecord]) -> tuple[Figure | None, str | None]:
    """Training-judge win rate against the held-out judge's win rate (or, without one, the gold
    reward gain): a policy that pleases its own judge but not the other has over-optimised it.
    Returns the figure and the summary key on the y axis."""
    ykey = "eval/heldout_win_rate" if _complete_with(runs, "eval/win_rate", "eval/heldout_win_rate") \
        else "eval/gold_reward_gain"
    pts = _complete_with(runs, "eval/win_rate", ykey)
    if not pts:
        return None, None
    heldout = ykey == "eval/heldout_win_rate"
    styles = optimizer_styles(runs)
    fig, ax = _figure("Training judge against " + ("the held-out judge" if heldout else "the gold reward")
                      + " (reward over-optimisation)", "training judge's win rate over reference (eval/win_rate)",
                      "held-out judge's win rate (eval/heldout_win_rate)" if heldout
                      else "gold reward gain over reference (eval/gold_reward_gain)")
    left_out = len(_complete_with(runs, "eval/win_rate")) - len(pts)
    if left_out:
        ax.text(0.99, 0.01, f"{left_out} run(s) without {ykey} not shown", transform=ax.transAxes, ha="right",
                va="bottom", fontsize=8, color="grey")
    for opt, rs in _by_optimizer(pts).items():
        xs, ys = [r.metric("eval/win_rate") for r in rs], [r.metric(ykey) for r in rs]
        ax.plot(xs, ys, linestyle="none", label=opt, **styles[opt])
        for r, x, y in zip(rs, xs, ys, strict=True):
            _annotate(ax, x, y, r.label)
    ref_y = 0.5 if heldout else 0.0
    if heldout:
        lo = min([0.0] + [r.metric("eval/win_rate") for r in pts])
        ax.plot([lo, 1.0], [lo, 1.0], color="grey", linestyle="--", linewidth=1, label="judges agree")
    else:
        ax.axhline(0.0, color="grey", linestyle="--", linewidth=1)
    ax.plot([0.5], [ref_y], label="reference policy", **REFERENCE_STYLE)
    ax.legend(title="optimizer", fontsize=8)
    return fig, ykey


def _history_series(run: RunRecord, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(run.history):
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            step = row.get("train/step", row.get("step", i))
            xs.append(float(step) if isinstance(step, (int, float)) else float(i))
            ys.append(float(v))
    return xs, ys


def plot_training_curves(runs: Sequence[RunRecord]) -> Figure | None:
    """train/reward against step for runs that log a reward, train/loss for those that do not."""
    by_key: dict[str, list[tuple[RunRecord, list[float], list[float]]]] = {"train/reward": [], "train/loss": []}
    for r in runs:
        for key in by_key:
            xs, ys = _history_series(r, key)
            if xs:
                by_key[key].append((r, xs, ys))
                break
    panels = [(k, v) for k, v in by_key.items() if v]
    if not panels:
        return None
    from matplotlib.figure import Figure

    styles = optimizer_styles(runs)
    fig = Figure(figsize=(6.5 * len(panels), 5.2), layout="constrained")
    fig.suptitle("Training curves (train_history.jsonl)")
    dashes = ["-", "--", ":", "-."]
    for i, (key, series) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.set_title({"train/reward": "judge reward during training", "train/loss": "training loss (runs without a reward)"}[key])
        ax.set_xlabel("training step (train/step)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        count: dict[str, int] = {}
        for r, xs, ys in series:
            n = count[r.optimizer] = count.get(r.optimizer, -1) + 1
            st = styles[r.optimizer]
            ax.plot(xs, ys, color=st["color"], linestyle=dashes[n % len(dashes)], marker=st["marker"],
                    markevery=max(1, len(xs) // 8), markersize=4, label=f"{r.label} ({r.optimizer})")
            _annotate(ax, xs[-1], ys[-1], r.label)
        ax.legend(fontsize=7)
    return fig


# name -> function; each writes <name>.png
PLOTS: dict[str, Callable[[Sequence[RunRecord]], Figure | None]] = {
    "gold_vs_kl": plot_gold_vs_kl,
    "winrate_vs_kl": plot_winrate_vs_kl,
    "length_drift": plot_length_drift,
    "train_vs_heldout": lambda runs: plot_train_vs_heldout(runs)[0],
    "training_curves": plot_training_curves,
}
WHY_SKIPPED = {
    "gold_vs_kl": "no complete run reports eval/gold_reward_policy and eval/kl",
    "winrate_vs_kl": "no complete run reports eval/win_rate and eval/kl",
    "length_drift": "no complete run reports eval/length_policy and eval/length_reference",
    "train_vs_heldout": "no complete run reports eval/win_rate with eval/heldout_win_rate or eval/gold_reward_gain",
    "training_curves": "no run has a train_history.jsonl with train/reward or train/loss",
}


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
