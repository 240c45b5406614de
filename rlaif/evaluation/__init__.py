"""Evaluation of the trained policy against the reference policy on held-out prompts.

Measures: the frozen judge's win rate of policy over reference (sample i against sample i of the
same prompt), mean gold reward of both (when the task has a gold labeller), the sequence-level KL
of the policy's samples to the reference, and mean response length in tokens.

The KL (``eval/kl``) is KL(pi_s || ref_T) per response, estimated on the policy's own samples as
the mean of log pi_s(y|x) - log ref_T(y|x) over the sampled token ids (EOS included when it was
sampled). pi_s is the distribution the samples were drawn from: the trained policy's
softmax(logits / T) at the sampling temperature T, truncated by top-k / top-p when those were on.
ref_T is the reference at the same temperature, untruncated (a truncated reference would give an
infinite KL to any sample outside its nucleus). Without truncation this is PPO's ``train/kl``
exactly: the same tokens, temperature and sum over tokens. With truncation, ``eval/kl_untruncated``
holds PPO's definition (the policy at T, untruncated, on the same samples). ``eval/kl_of`` says
in words which distribution the number is the KL of.

Samples without token ids (from an API generator, or records written before ids were kept) are
scored on their re-tokenised text, with EOS appended when they finished; that is counted in
``eval/kl_retokenised`` and said in ``eval/kl_of``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from rlaif.diagnostics import length_controlled_win_rate
from rlaif.diagnostics.stats import is_number
from rlaif.scoring import Sampling, chat_prefix_ids, sampled_logprobs, text_ids
from rlaif.types import Candidate, EvalSample, Prompt

# Part of the evaluation stage's cache key: records scored under another KL definition are not reused.
KL_ESTIMATOR = "sampled ids; pi at sampling T with its truncation vs reference at T"

# What a sample without recorded sampling parameters is assumed to have been drawn with.
UNKNOWN_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.fmean(xs) if xs else float("nan")


def _sem(xs) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")


def _valid_pref(p) -> bool:
    """A preference is P(policy better) in [0, 1]; None, NaN or out of range is an invalid verdict."""
    return is_number(p) and 0.0 <= float(p) <= 1.0


def _preferences(prefs: list) -> tuple[float, float, int]:
    """(win rate with ties as 1/2, mean preference, invalid verdicts) of the policy's preferences."""
    valid = [float(p) for p in prefs if _valid_pref(p)]
    wins = [1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5 for p in valid]
    return _mean(wins), _mean(valid), len(prefs) - len(valid)


def _scored_ids(c: Candidate, tokenizer) -> tuple[list[int], bool]:
    """(token ids to score, whether they are the sampled ids)."""
    if c.token_ids is not None:
        return list(c.token_ids), True
    eos = [tokenizer.eos_token_id] if c.finished and tokenizer.eos_token_id is not None else []
    return text_ids(tokenizer, c.text) + eos, False


def _distribution(c: Candidate) -> tuple[float, float, int]:
    s = {**UNKNOWN_SAMPLING, **(c.sampling or {})}
    return float(s["temperature"]), float(s["top_p"]), int(s["top_k"] or 0)


def _describe(dists: set, known: bool, retokenised: int, n: int) -> str:
    """``eval/kl_of``: the KL in words, with the sampling settings the samples carry."""
    parts = []
    for t, top_p, top_k in sorted(dists):
        cut = ", ".join(x for x in (f"top_k={top_k}" if top_k else "", f"top_p={top_p:g}" if top_p < 1 else "") if x)
        parts.append(f"KL(policy at T={t:g}{', ' + cut if cut else ''} || reference at T={t:g})")
    what = " and ".join(parts) + " per response"
    if not known:
        what += " (sampling parameters not recorded: T=1, no truncation assumed)"
    if retokenised == 0:
        return what + ", on the sampled token ids (EOS included when sampled)"
    if retokenised == n:
        return what + ", on re-tokenised response text (+EOS when finished): the samples carry no token ids"
    return what + f", on the sampled token ids; {retokenised} of {n} samples had none and were re-tokenised"


def sequence_kl(prompts: list[Prompt], policy: list[Candidate], policy_model, reference_model, tokenizer,
                batch_size: int = 16) -> tuple[list[tuple[float, float, float]], dict]:
    """Per policy sample (log pi_s, log pi_T, log ref_T) of its tokens, and the ``eval/kl*`` metrics.

    Samples are scored in groups that share their sampling parameters (the module docstring
    defines pi_s, pi_T and ref_T).
    """
    by_id = {p.id: p for p in prompts}
    prefixes = [chat_prefix_ids(tokenizer, by_id[c.prompt_id].messages) for c in policy]
    scored = [_scored_ids(c, tokenizer) for c in policy]
    dists = [_distribution(c) for c in policy]
    out: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)] * len(policy)
    for t, top_p, top_k in sorted(set(dists)):
        rows = [i for i, d in enumerate(dists) if d == (t, top_p, top_k)]
        pre, conts = [prefixes[i] for i in rows], [scored[i][0] for i in rows]
        pol = sampled_logprobs(policy_model, tokenizer.pad_token_id, pre, conts, Sampling(t, top_p, top_k), batch_size,
                               desc="KL (policy)")
        ref = sampled_logprobs(reference_model, tokenizer.pad_token_id, pre, conts, Sampling(t), batch_size,
                               desc="KL (reference)")
        for i, (ps, pt, _), (_, rt, _) in zip(rows, pol, ref, strict=True):
            out[i] = (ps, pt, rt)
    kls = [ps - rt for ps, _, rt in out]
    retok = sum(not ok for _, ok in scored)
    metrics = {"eval/kl": _mean(kls), "eval/kl_sem": _sem(kls), "eval/kl_retokenised": retok,
               "eval/kl_of": _describe(set(dists), all(c.sampling for c in policy), retok, len(policy))}
    if any(top_k or top_p < 1 for _, top_p, top_k in dists):
        metrics["eval/kl_untruncated"] = _mean([pt - rt for _, pt, rt in out])
    return out, metrics


@dataclass
class Scorers:
    """Who scores the held-out samples: the training judge, the task's gold labeller (None: the
    task has none) and a held-out judge that never trained the policy (None: not configured)."""

    judge: Any
    gold: Any = None
    heldout: Any = None


@dataclass
class KLModels:
    """What the KL estimate needs: both policies in the KL dtype and their tokenizer. ``policy``
    None: the policy is not a model (best-of-n sampling) and ``analytic`` is its KL."""

    policy: Any
    reference: Any
    tokenizer: Any
    batch_size: int = 16
    analytic: float | None = None


def evaluate(prompts: list[Prompt], policy: list[Candidate], reference: list[Candidate], scorers: Scorers,
             kl: KLModels) -> tuple[list[EvalSample], dict]:
    """Score held-out samples of the trained policy against the reference's, paired by (prompt, index).

    The held-out judge gives the training-judge vs held-out-judge view of over-optimisation. A judge
    preference that is None, NaN or outside [0, 1] is invalid: counted, and left out of every win rate.
    """
    by_id = {p.id: p for p in prompts}
    samples, golds = _gold_samples(by_id, policy, reference, scorers.gold)
    pol_samples = samples[: len(policy)]
    ref_by_key = {(c.prompt_id, c.index): c for c in reference}  # policy sample i vs reference sample i
    matched = [(c, ref_by_key[(c.prompt_id, c.index)]) for c in policy if (c.prompt_id, c.index) in ref_by_key]
    prefs = _prefer(scorers.judge, by_id, matched)
    win_rate, mean_pref, invalid = _preferences(prefs)
    metrics = {
        "eval/gold_reward_policy": _mean(golds["policy"]),
        "eval/gold_reward_reference": _mean(golds["reference"]),
        "eval/gold_reward_policy_sem": _sem(golds["policy"]),
        "eval/gold_reward_reference_sem": _sem(golds["reference"]),
        "eval/win_rate": win_rate,
        "eval/judge_preference": mean_pref,
        "eval/win_rate_invalid": invalid,
        "eval/pairs": len(matched),
        "eval/unpaired": len(policy) + len(reference) - 2 * len(matched),
        **_kl(prompts, policy, pol_samples, kl),
        "eval/length_policy": _mean([c.num_tokens for c in policy]),
        "eval/length_reference": _mean([c.num_tokens for c in reference]),
        "eval/samples_per_policy": len(policy),
        **_judge_scores(scorers.judge, by_id, policy, reference, pol_samples),
    }
    lengths = [a.num_tokens for a, _ in matched], [b.num_tokens for _, b in matched]
    if scorers.heldout is not None:
        h_prefs = _prefer(scorers.heldout, by_id, matched)
        h_win, h_pref, h_invalid = _preferences(h_prefs)
        metrics.update({"eval/heldout_win_rate": h_win, "eval/heldout_preference": h_pref,
                        "eval/heldout_invalid": h_invalid})
        h_lc = length_controlled_win_rate(h_prefs, *lengths)  # the held-out judge's verdicts at equal length
        if "lc_win_rate" in h_lc:
            metrics["eval/heldout_lc_win_rate"] = h_lc["lc_win_rate"]
            metrics["eval/heldout_length_coef"] = h_lc["length_coef"]
    lc = length_controlled_win_rate(prefs, *lengths)
    if "lc_win_rate" in lc:
        metrics["eval/lc_win_rate"] = lc["lc_win_rate"]
        metrics["eval/length_coef"] = lc["length_coef"]
    metrics["eval/gold_reward_gain"] = metrics["eval/gold_reward_policy"] - metrics["eval/gold_reward_reference"]
    return samples, metrics


def _gold_samples(by_id, policy, reference, gold) -> tuple[list[EvalSample], dict[str, list]]:
    """Both policies' samples as records (policy first) with their gold rewards."""
    samples, golds = [], {}
    for name, cands in (("policy", policy), ("reference", reference)):
        g = gold.score([by_id[c.prompt_id] for c in cands], [c.text for c in cands]) if gold else [None] * len(cands)
        golds[name] = g
        samples += [EvalSample(c.prompt_id, name, c.index, c.text, c.num_tokens, s) for c, s in zip(cands, g, strict=True)]
    return samples, golds


def _prefer(judge, by_id, matched) -> list:
    return judge.prefer([by_id[a.prompt_id] for a, _ in matched], [a.text for a, _ in matched],
                        [b.text for _, b in matched]) if matched else []


def _kl(prompts, policy, pol_samples, kl: KLModels) -> dict:
    """Sequence-level KL on the policy's samples (their log-probs are kept on the sample records)."""
    if kl.policy is None:
        return {"eval/kl": kl.analytic if kl.analytic is not None else float("nan"),
                "eval/kl_of": "KL(best-of-n || reference) per response, analytic: log n - (n-1)/n"}
    logps, metrics = sequence_kl(prompts, policy, kl.policy, kl.reference, kl.tokenizer, kl.batch_size)
    for s, (ps, _, rt) in zip(pol_samples, logps, strict=True):
        s.logp_policy, s.logp_reference = ps, rt
    return metrics


def _judge_scores(judge, by_id, policy, reference, pol_samples) -> dict:
    """The training judge's own score of both policies' samples (pointwise judges)."""
    if not judge.pointwise:
        return {}
    out = {}
    for name, cands in (("policy", policy), ("reference", reference)):
        sc = judge.scores([by_id[c.prompt_id] for c in cands], [c.text for c in cands])
        out[f"eval/judge_score_{name}"] = _mean([x for x in sc if x is not None and math.isfinite(x)])
        if name == "policy":
            for smp, x in zip(pol_samples, sc, strict=True):
                smp.judge_score = x
    return out
