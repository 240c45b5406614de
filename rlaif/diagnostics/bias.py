"""Judge-bias metrics (DESIGN.md section 4), as pure functions of verdicts, preferences and scores.

Conventions shared by every function here:

* a *preference* is P(a better than b), a float in [0, 1]; p > 0.5 picks a, p < 0.5 picks b and
  p == 0.5 exactly is a tie. ``None`` or a non-finite value is an invalid item: it is skipped and
  counted (``n_invalid``), never defaulted to either side;
* a both-order judgment is a ``PairwiseVerdict`` or a tuple ``(p_a_first, p_a_second)``:
  P(a better) with a shown in slot 1, and with a shown in slot 2 (texts really swapped);
* each function returns a dict of floats; counts (``n``...) are always there, and a rate that
  cannot be computed from the inputs (no items, zero variance) is absent rather than NaN.

These functions only measure. They never change a verdict, a score or a preference pair.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from rlaif.diagnostics.stats import cohen_kappa, fit_logistic, is_number, spearman
from rlaif.diagnostics.stats import expected_calibration_error as _ece
from rlaif.types import PairwiseVerdict

A, B, TIE = 1, -1, 0  # preference labels: a better, b better, tie


def _valid_prob(p) -> bool:
    return is_number(p) and 0.0 <= float(p) <= 1.0


def pref_label(p) -> int | None:
    """Label of one preference P(a better): A (+1), B (-1), TIE (0), or None when invalid."""
    if not _valid_prob(p):
        return None
    p = float(p)
    return A if p > 0.5 else B if p < 0.5 else TIE


def _orders(x) -> tuple[Any, Any] | None:
    if isinstance(x, PairwiseVerdict):
        return x.p_a_first, x.p_a_second
    if isinstance(x, tuple | list) and len(x) == 2:
        return x[0], x[1]
    return None


def verdict_label(x) -> int | None:
    """Label of a judgment given either as one preference or as both orders.

    Both orders: the response picked in both orders (A or B); TIE when the orders disagree or
    either is exactly 0.5 (Zheng et al.: inconsistent verdicts count as ties); None when invalid.
    """
    orders = _orders(x)
    if orders is None:
        return pref_label(x)
    l1, l2 = pref_label(orders[0]), pref_label(orders[1])
    if l1 is None or l2 is None:
        return None
    return l1 if l1 == l2 and l1 != TIE else TIE


def _slots(p_first: float, p_second: float) -> tuple[int | None, int | None]:
    """Slot picked in each order: order 1 shows a in slot 1, order 2 shows a in slot 2."""
    s1 = 1 if p_first > 0.5 else 2 if p_first < 0.5 else None
    s2 = 2 if p_second > 0.5 else 1 if p_second < 0.5 else None
    return s1, s2


# ---------------------------------------------------------------------------------------------
# Position bias
# ---------------------------------------------------------------------------------------------

def position_bias(verdicts: Sequence[PairwiseVerdict | tuple[float | None, float | None]]) -> dict[str, float]:
    """Position consistency and same-slot rate of both-order verdicts (Zheng et al. 2023; Lee et al. 2023).

    Over verdicts with both probabilities valid (``n``; the others are ``n_invalid``):

    * ``position_consistency``: share that pick the same *response* in both orders,
      (p_a_first > 0.5) == (p_a_second > 0.5) with neither exactly 0.5;
    * ``same_slot_rate``: share that pick the same *slot* in both orders (p_a_first > 0.5 and
      p_a_second < 0.5: slot 1 twice; the reverse: slot 2 twice);
    * ``first_slot_share``: of the same-slot verdicts, the share that picked slot 1;
    * ``tie_rate``: share with a probability of exactly 0.5 in either order. Ties count as
      inconsistent and as not same-slot, so consistency + same_slot_rate + tie_rate = 1.
    """
    n = n_invalid = consistent = same = first = ties = 0
    for v in verdicts:
        orders = _orders(v)
        if orders is None:
            raise TypeError(f"position_bias takes PairwiseVerdicts or (p_a_first, p_a_second) tuples, got {v!r}")
        if not (_valid_prob(orders[0]) and _valid_prob(orders[1])):
            n_invalid += 1
            continue
        n += 1
        s1, s2 = _slots(float(orders[0]), float(orders[1]))
        if s1 is None or s2 is None:
            ties += 1
        elif s1 == s2:
            same += 1
            first += s1 == 1
        else:
            consistent += 1
    out: dict[str, float] = {"n": float(n), "n_invalid": float(n_invalid)}
    if n:
        out.update(position_consistency=consistent / n, same_slot_rate=same / n, tie_rate=ties / n)
    if same:
        out["first_slot_share"] = first / same
    return out


# ---------------------------------------------------------------------------------------------
# Length bias
# ---------------------------------------------------------------------------------------------

def _check_lengths(name: str, *seqs: Sequence) -> None:
    sizes = {len(s) for s in seqs}
    if len(sizes) > 1:
        raise ValueError(f"{name}: inputs of different lengths {[len(s) for s in seqs]}; they must be aligned item by item")


def length_bias(prefs: Sequence[float | None] = (), len_a: Sequence[float] = (), len_b: Sequence[float] = (),
                scores: Sequence[float | None] = (), lengths: Sequence[float] = ()) -> dict[str, float]:
    """How much response length drives the judge.

    Pairwise part (``prefs[i]`` = P(a_i better), with the two responses' lengths):
    ``p_prefer_longer`` = share of pairs where the judge picked the longer response, over pairs of
    different lengths with a non-tie preference (``n_length_pairs``; ties ``n_length_ties``).
    Humans prefer the longer answer about 0.64 of the time, GPT-4 on AlpacaEval 0.68.

    Pointwise part: ``score_length_spearman`` = Spearman correlation between ``scores`` and
    ``lengths`` over items with a valid score (``n_scored``).

    Lengths are in whatever unit the caller passes; the pipeline passes tokens (``num_tokens``).
    """
    _check_lengths("length_bias (pairs)", prefs, len_a, len_b)
    _check_lengths("length_bias (scores)", scores, lengths)
    out: dict[str, float] = {}
    if prefs:
        longer = n = ties = 0
        for p, la, lb in zip(prefs, len_a, len_b, strict=True):
            lab = pref_label(p)
            if lab is None or la == lb:
                continue
            if lab == TIE:
                ties += 1
                continue
            n += 1
            longer += (lab == A) == (la > lb)
        out.update(n_length_pairs=float(n), n_length_ties=float(ties))
        if n:
            out["p_prefer_longer"] = longer / n
    if scores:
        pts = [(float(s), float(ln)) for s, ln in zip(scores, lengths, strict=True) if is_number(s)]
        out["n_scored"] = float(len(pts))
        rho = spearman([s for s, _ in pts], [ln for _, ln in pts]) if pts else None
        if rho is not None:
            out["score_length_spearman"] = rho
    return out


def length_controlled_win_rate(prefs: Sequence[float | None], len_policy: Sequence[float],
                               len_reference: Sequence[float], l2: float = 1e-2) -> dict[str, float]:
    """Length-controlled win rate of a policy (a) over a reference (b), AlpacaEval-LC style.

    Fits P(policy wins) = sigmoid(b0 + b1 * d / s) by logistic regression, where d is the length
    difference policy - reference (in the caller's unit; the pipeline uses tokens) and s its
    standard deviation (scaling only conditions the fit; the model is the same), and reads it off
    at d = 0: ``lc_win_rate`` = sigmoid(b0) (Dubois et al. 2024, arXiv:2404.04475). The outcome is
    1 when the judge prefers the policy, 0 when it prefers the reference and 0.5 for a tie.
    Also returns the raw ``win_rate`` (ties as 0.5) on the same items and ``length_coef`` (b1 per
    unit of length: positive = the judge favours the longer response).
    """
    _check_lengths("length_controlled_win_rate", prefs, len_policy, len_reference)
    ys, ds = [], []
    for p, lp, lr in zip(prefs, len_policy, len_reference, strict=True):
        lab = pref_label(p)
        if lab is None or not (is_number(lp) and is_number(lr)):
            continue
        ys.append({A: 1.0, B: 0.0, TIE: 0.5}[lab])
        ds.append(float(lp) - float(lr))
    out: dict[str, float] = {"n": float(len(ys)), "n_invalid": float(len(prefs) - len(ys))}
    if not ys:
        return out
    d = np.asarray(ds)
    s = float(d.std()) or 1.0
    b0, b1 = fit_logistic(d / s, ys, l2=l2)
    lc = 1.0 / (1.0 + math.exp(-b0)) if b0 > -700 else 0.0  # b0 = -inf when the policy never wins
    out.update(lc_win_rate=lc, win_rate=float(np.mean(ys)), length_coef=b1 / s)
    return out


# ---------------------------------------------------------------------------------------------
# Self-preference
# ---------------------------------------------------------------------------------------------

_SUFFIXES = ("instruct", "chat", "it", "base", "sft", "dpo", "rlhf", "hf", "gguf")


def base_model_name(identity: str) -> str:
    """A model's family name from a config name, hub id, local path or pool identity.

    ``hub:HuggingFaceTB/SmolLM2-135M-Instruct@abc``, ``embedded:smollm2-135m-instruct:sha``,
    ``local:/m/SmolLM2-135M-Instruct:hash`` and ``smollm2-135m-instruct`` all give
    ``smollm2-135m``: the last path component, lower-cased, without revision, hash or
    instruction-tuning suffixes.
    """
    s = identity.strip()
    kind, _, rest = s.partition(":")
    if kind in {"hub", "embedded", "local", "trained"} and rest:
        s = rest
        if kind == "hub":
            s = s.split("@", 1)[0]
        elif kind in {"embedded", "local"} and ":" in s:
            s = s.rsplit(":", 1)[0]  # drop the weight hash
    s = s.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1].lower()
    parts = re.split(r"[-_.]", s)
    while len(parts) > 1 and parts[-1] in _SUFFIXES:
        parts.pop()
    return "-".join(parts)


def shares_base_model(judge_model: str | None, policy_model: str | None) -> bool | None:
    """True when judge and policy are the same model or the same family (name heuristic).

    None when either is unknown. A heuristic on names: a fine-tuned copy saved under a new
    name is not recognised, so pass the policy's *starting* model.
    """
    if not judge_model or not policy_model:
        return None
    return judge_model == policy_model or base_model_name(judge_model) == base_model_name(policy_model)


def self_preference(verdicts: Sequence[PairwiseVerdict], own: Collection[tuple[str, int]],
                    shared_base_model: bool | None = None) -> dict[str, float]:
    """Self-preference of a judge (Panickssery et al. 2024, arXiv:2404.13076).

    ``own`` holds the (prompt_id, index) keys of the responses the judge's own model wrote. Only
    verdicts comparing one own and one other response count (``n_mixed``). On the
    position-consistent ones (``n``):

        self_preference = 1/2 * [P(prefers own | own shown first) + P(prefers own | own shown second)]

    (0.5 = no self-preference; on consistent verdicts the two terms are equal). Over every valid
    mixed verdict, consistent or not, ``p_own_when_first`` / ``p_own_when_second`` are the mean
    judge probabilities that the own response is better when shown first / second, and
    ``self_preference_soft`` their mean. ``shared_base_model`` is reported as 1.0/0.0 when given.
    """
    own_set = set(own)
    n_mixed = 0
    hard_first, hard_second, soft_first, soft_second = [], [], [], []
    for v in verdicts:
        a_own, b_own = (v.prompt_id, v.a) in own_set, (v.prompt_id, v.b) in own_set
        if a_own == b_own or not (_valid_prob(v.p_a_first) and _valid_prob(v.p_a_second)):
            continue
        n_mixed += 1
        p1, p2 = float(v.p_a_first), float(v.p_a_second)
        # P(own better) with own in slot 1 / slot 2.
        own_first, own_second = (p1, p2) if a_own else (1.0 - p2, 1.0 - p1)
        soft_first.append(own_first)
        soft_second.append(own_second)
        s1, s2 = _slots(p1, p2)
        if s1 is not None and s2 is not None and s1 != s2:  # position-consistent
            hard_first.append(float(own_first > 0.5))
            hard_second.append(float(own_second > 0.5))
    out: dict[str, float] = {"n_mixed": float(n_mixed), "n": float(len(hard_first))}
    if hard_first:
        out["self_preference"] = 0.5 * (sum(hard_first) / len(hard_first) + sum(hard_second) / len(hard_second))
    if soft_first:
        first, second = sum(soft_first) / len(soft_first), sum(soft_second) / len(soft_second)
        out.update(self_preference_soft=0.5 * (first + second), p_own_when_first=first, p_own_when_second=second)
    if shared_base_model is not None:
        out["shared_base_model"] = float(bool(shared_base_model))
    return out


# ---------------------------------------------------------------------------------------------
# Agreement with gold labels, and between judges
# ---------------------------------------------------------------------------------------------

def agreement(judge_prefs: Sequence, gold_prefs: Sequence[float | None]) -> dict[str, float]:
    """Accuracy and Cohen's kappa of the judge against gold (or human) preferences.

    ``judge_prefs[i]``: a preference P(a better), or both orders (a ``PairwiseVerdict`` or a
    ``(p_a_first, p_a_second)`` tuple); ``gold_prefs[i]``: the gold P(a better), 1/0 or 0.5 for a
    gold tie. Items where either is invalid are skipped (``n_invalid``). Two setups (Zheng et al.
    2023, arXiv:2306.05685):

    * with ties (S1): three labels a / b / tie; a both-order verdict that picks different
      responses in the two orders counts as a tie: ``accuracy_with_ties``, ``cohen_kappa_with_ties``
      over ``n_with_ties`` items (random judge ~ 1/3);
    * ties excluded (S2): only items where neither judge nor gold is a tie: ``accuracy``,
      ``cohen_kappa`` over ``n`` items (random judge ~ 1/2).

    A single preference carries no order information, so with one only exact 0.5 is a tie: pass
    both orders to count inconsistent verdicts as ties.
    """
    _check_lengths("agreement", judge_prefs, gold_prefs)
    pairs = []
    for j, g in zip(judge_prefs, gold_prefs, strict=True):
        lj, lg = verdict_label(j), pref_label(g)
        if lj is not None and lg is not None:
            pairs.append((lj, lg))
    out: dict[str, float] = {"n_invalid": float(len(judge_prefs) - len(pairs)), "n_with_ties": float(len(pairs))}
    out.update(_agree(pairs, "_with_ties"))
    strict = [(lj, lg) for lj, lg in pairs if lj != TIE and lg != TIE]
    out["n"] = float(len(strict))
    out.update(_agree(strict, ""))
    return out


def _agree(pairs: list[tuple[int, int]], suffix: str) -> dict[str, float]:
    if not pairs:
        return {}
    out = {f"accuracy{suffix}": sum(x == y for x, y in pairs) / len(pairs)}
    k = cohen_kappa([x for x, _ in pairs], [y for _, y in pairs])
    if k is not None:
        out[f"cohen_kappa{suffix}"] = k
    return out


def inter_judge_agreement(prefs_by_judge: Mapping[str, Sequence], exclude_ties: bool = False) -> dict[str, float]:
    """Agreement between the judges of a panel on the same items (lists aligned by item).

    Each entry is anything ``agreement`` accepts as a judge preference. For every pair of judges,
    over items both judged validly (ties as a third label, or dropped with ``exclude_ties``):
    ``agreement/<j1>|<j2>`` and ``cohen_kappa/<j1>|<j2>``; plus their means ``mean_agreement`` and
    ``mean_cohen_kappa`` (over the pairs where each is defined) and ``n_judges``.
    """
    names = list(prefs_by_judge)
    if names:
        _check_lengths("inter_judge_agreement", *prefs_by_judge.values())
    labels = {name: [verdict_label(x) for x in prefs_by_judge[name]] for name in names}
    out: dict[str, float] = {"n_judges": float(len(names))}
    accs, kappas = [], []
    for j1, j2 in itertools.combinations(names, 2):
        both = [(x, y) for x, y in zip(labels[j1], labels[j2], strict=True) if x is not None and y is not None
                and not (exclude_ties and TIE in (x, y))]
        out[f"n/{j1}|{j2}"] = float(len(both))
        if not both:
            continue
        acc = sum(x == y for x, y in both) / len(both)
        out[f"agreement/{j1}|{j2}"] = acc
        accs.append(acc)
        k = cohen_kappa([x for x, _ in both], [y for _, y in both])
        if k is not None:
            out[f"cohen_kappa/{j1}|{j2}"] = k
            kappas.append(k)
    if accs:
        out["mean_agreement"] = sum(accs) / len(accs)
    if kappas:
        out["mean_cohen_kappa"] = sum(kappas) / len(kappas)
    return out


# ---------------------------------------------------------------------------------------------
# Transitivity and calibration
# ---------------------------------------------------------------------------------------------

def transitivity(verdicts: Sequence[PairwiseVerdict]) -> dict[str, float]:
    """Share of prompt-level triples whose verdicts form a cycle (A>B, B>C, C>A).

    A triple counts (``n_triples``) when the three candidates of one prompt have a valid
    order-averaged preference ``p_a`` for all three pairs; it is intransitive when those three
    preferences form a strict cycle. A triple with a tie cannot be a strict cycle but counts in the
    denominator. ``transitivity_violations`` is the intransitive share.
    """
    prefs: dict[str, dict[tuple[int, int], int]] = defaultdict(dict)
    for v in verdicts:
        lab = pref_label(v.p_a)
        if lab is None or v.a == v.b:
            continue
        lo, hi = sorted((v.a, v.b))
        prefs[v.prompt_id][(lo, hi)] = lab if v.a == lo else -lab  # +1: lo beats hi
    n = bad = 0
    for table in prefs.values():
        items = sorted({i for pair in table for i in pair})
        for x, y, z in itertools.combinations(items, 3):
            if (x, y) in table and (y, z) in table and (x, z) in table:
                n += 1
                xy, yz, xz = table[(x, y)], table[(y, z)], table[(x, z)]
                # x>y>z>x  or  x<y<z<x
                bad += (xy == 1 and yz == 1 and xz == -1) or (xy == -1 and yz == -1 and xz == 1)
    out: dict[str, float] = {"n_triples": float(n)}
    if n:
        out["transitivity_violations"] = bad / n
    return out


def calibration(probs: Sequence[float | None], gold_labels: Sequence[float | None], bins: int = 10) -> dict[str, float]:
    """Expected calibration error of the judge's P(a better) against gold outcomes.

    ``gold_labels[i]`` is 1 (a better), 0 (b better) or 0.5 (tie); items with an invalid
    probability or label are skipped (``n_invalid``). Equal-width bins over [0, 1]:
    ECE = sum_b (n_b / n) |mean prob_b - mean gold_b|.
    """
    _check_lengths("calibration", probs, gold_labels)
    ps, ys = [], []
    for p, y in zip(probs, gold_labels, strict=True):
        if _valid_prob(p) and _valid_prob(y):
            ps.append(float(p))
            ys.append(float(y))
    out: dict[str, float] = {"n": float(len(ps)), "n_invalid": float(len(probs) - len(ps))}
    ece = _ece(ps, ys, bins)
    if ece is not None:
        out["calibration_error"] = ece
    return out
