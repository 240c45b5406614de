"""length_bias: Singhal et al. 2023, "A Long Way to Go: Investigating Length Correlations in RLHF"
(arXiv:2310.03716; code github.com/PrasannS/rlhf-length-biases; headline from secondary copies [S]).

Two policies trained under one length-biased judge: ``judge_reward`` learns from the judge's own
reward (its preferences), ``length_only`` from response length alone. Both are evaluated by the
same length-biased judge (``evaluation.heldout_judge``, so both members read it from the same key):
its raw win rate over the starting policy, and its length-controlled win rate (the logistic fit of
the verdicts on the length difference, read off at equal length; ``eval/heldout_lc_win_rate``).
The paper's point: a length-only reward reproduces most of the raw win-rate gain, so the raw win
rate cannot tell the two apart; the length-controlled one can.
"""

from __future__ import annotations

from rlaif.reproductions.checks.base import CheckResult, Criterion, StudyData, check, missing


@check("length_bias")
def length_bias(study: StudyData, params: dict) -> CheckResult:
    """Criteria (thresholds in ``params``, i.e. ``reproduction.expected``):

    - ``length_only_raw_gain``: the length-only policy wins under the biased judge (raw win rate
      >= ``min_raw_win_rate``);
    - ``raw_close``: its raw win rate is within ``raw_margin`` of the judge-reward policy's
      (raw_length_only >= raw_judge - raw_margin): the raw win rate does not expose it;
    - ``lc_gap``: its length-controlled win rate is at least ``min_lc_gap`` below the
      judge-reward policy's: the length-controlled win rate does;
    - ``length_only_longer``: the length reward did lengthen the responses (policy tokens minus
      reference tokens >= ``min_length_gain``), so the study tested what it meant to.
    Gold reward gains of both are reported (not checked).
    """
    a_name, b_name = params.get("judge_run", "judge_reward"), params.get("length_run", "length_only")
    win_key = params.get("win_key", "eval/heldout_win_rate")
    lc_key = params.get("lc_key", "eval/heldout_lc_win_rate")
    min_raw = float(params.get("min_raw_win_rate", 0.55))
    margin = float(params.get("raw_margin", 0.10))
    min_gap = float(params.get("min_lc_gap", 0.10))
    min_len = float(params.get("min_length_gain", 1.0))

    def get(run: str, key: str) -> float | None:
        return study.metric(run, key)

    def absent(run: str, *keys: str) -> str:
        r = study.runs.get(run)
        if r is None:
            return f"no study member named {run!r} (members: {', '.join(study.runs) or 'none'})"
        if not r.complete:
            return f"member {run!r} did not finish: {r.problem}"
        gone = [k for k in keys if r.metric(k) is None]
        return f"member {run!r} has no {', '.join(gone)} (is evaluation.heldout_judge set?)"

    raw_a, raw_b = get(a_name, win_key), get(b_name, win_key)
    lc_a, lc_b = get(a_name, lc_key), get(b_name, lc_key)
    crit = []

    claim = f"the length-only policy wins under the length-biased judge ({win_key})"
    exp = f">= {min_raw:g}"
    crit.append(missing("length_only_raw_gain", claim, exp, absent(b_name, win_key)) if raw_b is None else
                Criterion("length_only_raw_gain", claim, round(raw_b, 4), exp, raw_b >= min_raw))

    claim = "raw win rate hides it: length-only's raw win rate minus the judge reward's"
    exp = f">= -{margin:g}"
    if raw_a is None or raw_b is None:
        crit.append(missing("raw_close", claim, exp, absent(a_name if raw_a is None else b_name, win_key)))
    else:
        d = raw_b - raw_a
        crit.append(Criterion("raw_close", claim, round(d, 4), exp, d >= -margin))

    claim = "length-controlled win rate exposes it: judge reward's LC win rate minus length-only's"
    exp = f">= {min_gap:g}"
    if lc_a is None or lc_b is None:
        crit.append(missing("lc_gap", claim, exp, absent(a_name if lc_a is None else b_name, lc_key)))
    else:
        g = lc_a - lc_b
        crit.append(Criterion("lc_gap", claim, round(g, 4), exp, g >= min_gap))

    claim = "the length reward lengthened the responses (policy minus reference, tokens)"
    exp = f">= {min_len:g}"
    lp, lr = get(b_name, "eval/length_policy"), get(b_name, "eval/length_reference")
    if lp is None or lr is None:
        crit.append(missing("length_only_longer", claim, exp, absent(b_name, "eval/length_policy", "eval/length_reference")))
    else:
        crit.append(Criterion("length_only_longer", claim, round(lp - lr, 2), exp, lp - lr >= min_len))

    values = {}
    for run in (a_name, b_name):
        for short, key in (("raw_win_rate", win_key), ("lc_win_rate", lc_key), ("gold_gain", "eval/gold_reward_gain"),
                           ("length_policy", "eval/length_policy"), ("length_reference", "eval/length_reference"),
                           ("length_coef", "eval/heldout_length_coef"), ("kl", "eval/kl")):
            if (v := get(run, key)) is not None:
                values[f"{run}/{short}"] = round(v, 4)
    ga, gb = get(a_name, "eval/gold_reward_gain"), get(b_name, "eval/gold_reward_gain")
    if ga is not None and gb is not None:
        values["gold_gain_gap"] = round(ga - gb, 4)  # the real difference the LC win rate should reveal
    return CheckResult("Under a length-biased judge a length-only reward matches the judge reward's raw win rate; "
                       "the length-controlled win rate exposes the difference (Singhal et al. 2023)", crit, values)
