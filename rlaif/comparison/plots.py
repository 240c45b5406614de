"""The comparison plots: gold reward and judge win rate against KL, length drift, training judge
against held-out judge, training curves.

Each ``plot_*`` returns a matplotlib ``Figure`` (no pyplot state), or None when no run has the
data; ``PLOTS`` names them and ``WHY_SKIPPED`` says why one is not drawn. matplotlib loads on the
first plot, not on import (``rlaif`` imports ``rlaif.compare`` for the Hydra callback).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rlaif.comparison.runs import RunRecord

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
REFERENCE_STYLE = {"color": "black", "marker": "*", "markersize": 13, "linestyle": "none"}


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
