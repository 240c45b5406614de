"""One call that turns a judge stage's records into namespaced diagnostics, and a plot of them.

``compute_diagnostics`` reads what the judge stage already produced (candidates, judgments,
pairwise verdicts) plus optional gold scores; it runs no model. A metric the inputs cannot support
(no verdicts for a pointwise judge, no gold labels, fewer than three candidates per prompt) is left
out of the dict -- never filled with NaN or a default.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from rlaif.diagnostics.bias import (
    agreement,
    calibration,
    length_bias,
    position_bias,
    self_preference,
    shares_base_model,
    transitivity,
)
from rlaif.diagnostics.stats import is_number
from rlaif.types import Candidate, Judgment, PairwiseVerdict, Prompt

PREFIX = "judge/"


def _gold_pref(ga: float, gb: float) -> float:
    return 1.0 if ga > gb else 0.0 if ga < gb else 0.5


def compute_diagnostics(prompts: Sequence[Prompt], candidates: Sequence[Candidate], judgments: Sequence[Judgment],
                        verdicts: Sequence[PairwiseVerdict],
                        gold_scores: Mapping[tuple[str, int], float] | None = None,
                        judge_model: str | None = None, policy_model: str | None = None) -> dict[str, float]:
    """Judge-bias diagnostics of one judge stage, keys under ``judge/``.

    Pairwise judges (``verdicts`` given): ``position_consistency``, ``same_slot_rate``,
    ``same_slot_first_share``, ``position_tie_rate``, ``verdicts`` / ``verdicts_invalid``
    (counts), ``transitivity_violations`` (with ``transitivity_triples``). Pairs compared by the
    judge are the verdicts' pairs, the judge's preference their order-averaged ``p_a``.

    Pointwise judges (no verdicts): the pairs are all pairs of validly scored candidates of the
    same prompt, and the judge prefers the higher score (equal scores: a tie).

    Both kinds: ``p_prefer_longer`` (``length_pairs``), ``score_length_spearman`` (score against
    ``num_tokens``: lengths are in tokens, EOS included when generated).

    With ``gold_scores`` ((prompt_id, index) -> gold score; the gold prefers the higher):
    ``accuracy_vs_gold`` / ``cohen_kappa_vs_gold`` over ``gold_pairs`` (ties excluded, Zheng et
    al. S2), ``accuracy_vs_gold_with_ties`` / ``cohen_kappa_vs_gold_with_ties`` over
    ``gold_pairs_with_ties`` (S1: an order-inconsistent verdict counts as a tie; the judge gate
    reads these); pairwise judges also get
    ``accuracy_vs_gold_averaged`` (the order-averaged preference that builds the training pairs,
    ties excluded) and ``calibration_error`` (ECE of ``p_a`` against the gold outcome).

    With ``judge_model`` and ``policy_model``: ``self_preference_flag`` (1.0 when they share a
    base model); and ``self_preference`` / ``self_preference_soft`` when verdicts compare the
    judge model's own candidates (``Candidate.model``) with other models' candidates.

    ``prompts`` is accepted for a uniform stage signature; the records carry their prompt ids.
    """
    out: dict[str, float] = {}
    length = {(c.prompt_id, c.index): c.num_tokens for c in candidates}
    scores = {(j.prompt_id, j.index): float(j.score) for j in judgments if j.valid}
    # Pairs the judge expressed a preference on: (key_a, key_b, P(a better)).
    pairs = _position(verdicts, out) if verdicts else _pointwise_pairs(scores)
    _length(pairs, scores, length, out)
    if gold_scores:
        _gold(gold_scores, verdicts, pairs, out)
    _self_preference(candidates, verdicts, judge_model, policy_model, out)
    return {PREFIX + k: float(v) for k, v in out.items()}


Key = tuple[str, int]


def _position(verdicts, out: dict) -> list[tuple[Key, Key, float | None]]:
    """Position consistency, same-slot rate, ties and transitivity of a pairwise judge; its pairs."""
    pos = position_bias(list(verdicts))
    out["verdicts"] = pos["n"] + pos["n_invalid"]
    out["verdicts_invalid"] = pos["n_invalid"]
    for src, dst in (("position_consistency", "position_consistency"), ("same_slot_rate", "same_slot_rate"),
                     ("first_slot_share", "same_slot_first_share"), ("tie_rate", "position_tie_rate")):
        if src in pos:
            out[dst] = pos[src]
    tr = transitivity(list(verdicts))
    out["transitivity_triples"] = tr["n_triples"]
    if "transitivity_violations" in tr:
        out["transitivity_violations"] = tr["transitivity_violations"]
    return [((v.prompt_id, v.a), (v.prompt_id, v.b), v.p_a) for v in verdicts]


def _pointwise_pairs(scores: dict[Key, float]) -> list[tuple[Key, Key, float]]:
    """Every pair of validly scored candidates of a prompt; the higher score is preferred."""
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for (pid, idx) in sorted(scores):
        by_prompt[pid].append(idx)
    pairs = []
    for pid, idxs in by_prompt.items():
        for i, j in itertools.combinations(idxs, 2):
            sa, sb = scores[(pid, i)], scores[(pid, j)]
            pairs.append(((pid, i), (pid, j), 1.0 if sa > sb else 0.0 if sa < sb else 0.5))
    return pairs


def _length(pairs, scores: dict[Key, float], length: dict[Key, int], out: dict) -> None:
    lp = [(p, length[ka], length[kb]) for ka, kb, p in pairs if ka in length and kb in length]
    keyed = [(s, length[k]) for k, s in scores.items() if k in length]
    lb = length_bias([p for p, _, _ in lp], [a for _, a, _ in lp], [b for _, _, b in lp],
                     [s for s, _ in keyed], [n for _, n in keyed])
    if pairs:
        out["length_pairs"] = lb.get("n_length_pairs", 0.0)
    for k in ("p_prefer_longer", "score_length_spearman"):
        if k in lb:
            out[k] = lb[k]


def _gold(gold_scores, verdicts, pairs, out: dict) -> None:
    """Agreement with the gold labeller (and, for pairwise judges, calibration against it)."""
    gold = {k: float(v) for k, v in gold_scores.items() if is_number(v)}
    if verdicts:
        rows = [(v, _gold_pref(gold[(v.prompt_id, v.a)], gold[(v.prompt_id, v.b)])) for v in verdicts
                if (v.prompt_id, v.a) in gold and (v.prompt_id, v.b) in gold]
        ag = agreement([v for v, _ in rows], [g for _, g in rows])
        avg = agreement([v.p_a for v, _ in rows], [g for _, g in rows])
        if "accuracy" in avg:
            out["accuracy_vs_gold_averaged"] = avg["accuracy"]
        cal = calibration([v.p_a for v, _ in rows], [g for _, g in rows])
        if "calibration_error" in cal:
            out["calibration_error"] = cal["calibration_error"]
    else:
        rows = [(p, _gold_pref(gold[ka], gold[kb])) for ka, kb, p in pairs if ka in gold and kb in gold]
        ag = agreement([p for p, _ in rows], [g for _, g in rows])
    out["gold_pairs"] = ag["n"]
    out["gold_pairs_with_ties"] = ag["n_with_ties"]
    for src, dst in (("accuracy", "accuracy_vs_gold"), ("cohen_kappa", "cohen_kappa_vs_gold"),
                     ("accuracy_with_ties", "accuracy_vs_gold_with_ties"),
                     ("cohen_kappa_with_ties", "cohen_kappa_vs_gold_with_ties")):
        if src in ag:
            out[dst] = ag[src]


def _self_preference(candidates, verdicts, judge_model, policy_model, out: dict) -> None:
    shared = shares_base_model(judge_model, policy_model)
    if shared is not None:
        out["self_preference_flag"] = float(shared)
    if judge_model and verdicts:
        own = {(c.prompt_id, c.index) for c in candidates if c.model and shares_base_model(c.model, judge_model)}
        sp = self_preference(list(verdicts), own)
        for k in ("self_preference", "self_preference_soft"):
            if k in sp:
                out[k] = sp[k]


def diagnostics_plot(candidates: Sequence[Candidate], judgments: Sequence[Judgment],
                     verdicts: Sequence[PairwiseVerdict], path: str | Path, title: str | None = None) -> Path:
    """Write a PNG: judge score against length (tokens), and the judge's slot choices over both orders.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change); matplotlib is
    imported here only, so the package works without it until a plot is asked for.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    length = {(c.prompt_id, c.index): c.num_tokens for c in candidates}
    pts = [(length[(j.prompt_id, j.index)], j.score) for j in judgments
           if j.valid and (j.prompt_id, j.index) in length]

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    if pts:
        ax1.scatter([x for x, _ in pts], [y for _, y in pts], s=12, alpha=0.7)
        rho = length_bias(scores=[y for _, y in pts], lengths=[x for x, _ in pts]).get("score_length_spearman")
        ax1.set_title("judge score vs length" + (f" (Spearman {rho:.2f})" if rho is not None else ""))
    else:
        ax1.text(0.5, 0.5, "no valid scores", ha="center", va="center", transform=ax1.transAxes)
        ax1.set_title("judge score vs length")
    ax1.set_xlabel("response length (tokens)")
    ax1.set_ylabel("judge score")

    pos = position_bias(list(verdicts)) if verdicts else {"n": 0.0}
    if pos["n"]:
        n = pos["n"]
        same = pos["same_slot_rate"] * n
        first = pos.get("first_slot_share", 0.0) * same
        counts = {"consistent": pos["position_consistency"] * n, "slot 1 both": first,
                  "slot 2 both": same - first, "tie": pos["tie_rate"] * n}
        ax2.bar(list(counts), [round(c) for c in counts.values()], color=["tab:green", "tab:red", "tab:orange", "tab:gray"])
        ax2.set_ylabel("verdicts")
        ax2.set_title(f"choices over both orders (n={int(n)})")
    else:
        ax2.text(0.5, 0.5, "no pairwise verdicts\n(pointwise judge: no slots)", ha="center", va="center",
                 transform=ax2.transAxes)
        ax2.set_title("position bias")
        ax2.set_xticks([])
        ax2.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    return path
