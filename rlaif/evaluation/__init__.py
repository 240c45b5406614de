"""Evaluation of the trained policy against the reference policy on held-out prompts.

Measures: the frozen judge's win rate of policy over reference (sample i against sample i of the
same prompt), mean gold reward of both (when the task has a gold labeller), sequence-level
KL(policy || reference) estimated on the policy's own samples as mean of
log pi(y|x) - log pi_ref(y|x), and mean response length in tokens.
"""

from __future__ import annotations

import math
import statistics

from rlaif.diagnostics import length_controlled_win_rate
from rlaif.scoring import chat_prefix_ids, continuation_logprobs
from rlaif.types import Candidate, EvalSample, Prompt


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.fmean(xs) if xs else float("nan")


def _sem(xs) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")


def evaluate(prompts: list[Prompt], policy: list[Candidate], reference: list[Candidate], judge, gold,
             policy_model, reference_model, tokenizer, kl_batch_size: int = 16, analytic_kl: float | None = None,
             heldout_judge=None) -> tuple[list[EvalSample], dict]:
    """Score held-out samples of the trained policy against the reference's, paired by (prompt, index).

    ``policy_model`` None with ``analytic_kl``: the policy is not a model (best-of-n sampling) and its
    KL is known in closed form. ``heldout_judge``: a second judge that never trained the policy,
    for the training-judge vs held-out-judge view of over-optimisation.
    """
    by_id = {p.id: p for p in prompts}
    samples = []
    golds = {}
    for name, cands in (("policy", policy), ("reference", reference)):
        g = gold.score([by_id[c.prompt_id] for c in cands], [c.text for c in cands]) if gold else [None] * len(cands)
        golds[name] = g
        samples += [EvalSample(c.prompt_id, name, c.index, c.text, c.num_tokens, s) for c, s in zip(cands, g, strict=True)]

    # Judge win rate: policy sample i vs reference sample i of the same prompt.
    ref_by_key = {(c.prompt_id, c.index): c for c in reference}
    matched = [(c, ref_by_key[(c.prompt_id, c.index)]) for c in policy if (c.prompt_id, c.index) in ref_by_key]
    prefs = judge.prefer([by_id[a.prompt_id] for a, _ in matched], [a.text for a, _ in matched],
                         [b.text for _, b in matched]) if matched else []
    valid_prefs = [p for p in prefs if p is not None]
    wins = [1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5 for p in valid_prefs]

    # Sequence-level KL on the policy's samples.
    pol_samples = [s for s in samples if s.source == "policy"]
    if policy_model is not None:
        prefixes = [chat_prefix_ids(tokenizer, by_id[c.prompt_id].messages) for c in policy]
        conts = [tokenizer(c.text, add_special_tokens=False)["input_ids"] for c in policy]
        lp_pol = continuation_logprobs(policy_model, tokenizer.pad_token_id, prefixes, conts, kl_batch_size,
                                       desc="KL (policy)")
        lp_ref = continuation_logprobs(reference_model, tokenizer.pad_token_id, prefixes, conts, kl_batch_size,
                                       desc="KL (reference)")
        kls = [a[0] - b[0] for a, b in zip(lp_pol, lp_ref, strict=True)]
        for s, a, b in zip(pol_samples, lp_pol, lp_ref, strict=True):
            s.logp_policy, s.logp_reference = a[0], b[0]
    else:
        kls = [analytic_kl] if analytic_kl is not None else []

    # The training judge's own score of both policies' samples (pointwise judges).
    judge_scores = {}
    if judge.pointwise:
        for name, cands in (("policy", policy), ("reference", reference)):
            sc = judge.scores([by_id[c.prompt_id] for c in cands], [c.text for c in cands])
            judge_scores[name] = [x for x in sc if x is not None and math.isfinite(x)]
            if name == "policy":
                for smp, x in zip(pol_samples, sc, strict=True):
                    smp.judge_score = x

    metrics = {
        "eval/gold_reward_policy": _mean(golds["policy"]),
        "eval/gold_reward_reference": _mean(golds["reference"]),
        "eval/gold_reward_policy_sem": _sem(golds["policy"]),
        "eval/gold_reward_reference_sem": _sem(golds["reference"]),
        "eval/win_rate": _mean(wins),
        "eval/judge_preference": _mean(valid_prefs),
        "eval/win_rate_invalid": len(prefs) - len(valid_prefs),
        "eval/kl": _mean(kls),
        "eval/length_policy": _mean([c.num_tokens for c in policy]),
        "eval/length_reference": _mean([c.num_tokens for c in reference]),
        "eval/samples_per_policy": len(policy),
    }
    if judge_scores:
        metrics["eval/judge_score_policy"] = _mean(judge_scores["policy"])
        metrics["eval/judge_score_reference"] = _mean(judge_scores["reference"])
    if heldout_judge is not None:
        hp = heldout_judge.prefer([by_id[a.prompt_id] for a, _ in matched], [a.text for a, _ in matched],
                                  [b.text for _, b in matched]) if matched else []
        hv = [p for p in hp if p is not None]
        metrics["eval/heldout_win_rate"] = _mean([1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5 for p in hv])
        metrics["eval/heldout_preference"] = _mean(hv)
        metrics["eval/heldout_invalid"] = len(hp) - len(hv)
    lc = length_controlled_win_rate(prefs, [a.num_tokens for a, _ in matched], [b.num_tokens for _, b in matched])
    if "lc_win_rate" in lc:
        metrics["eval/lc_win_rate"] = lc["lc_win_rate"]
        metrics["eval/length_coef"] = lc["length_coef"]
    metrics["eval/gold_reward_gain"] = metrics["eval/gold_reward_policy"] - metrics["eval/gold_reward_reference"]
    return samples, metrics
