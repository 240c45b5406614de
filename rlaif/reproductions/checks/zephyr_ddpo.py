"""zephyr_ddpo: Tunstall et al. 2023, Zephyr (dDPO on UltraFeedback binarized).

The paper's headline, MT-Bench 7.34, needs MT-Bench's GPT-4 judge and is not measured by rlaif at
any scale. What this check does test is the mechanism the paper's recipe rests on: offline DPO
straight from the dataset's chosen/rejected pairs (``preferences.source=data``, no judge
labelling) fits those pairs, i.e. DPO's implicit reward ranks chosen above rejected more often and
by a larger margin as training goes on (``train/rewards/accuracies`` and ``train/rewards/margins``
of TRL's DPOTrainer, read from the run's train_history.jsonl).
"""

from __future__ import annotations

from rlaif.reproductions.checks.base import CheckResult, Criterion, StudyData, check, missing

NOT_MEASURED = ("smoke test of the recipe only: MT-Bench (7.34 in the paper) and AlpacaEval (90.6%) are not "
                "measured by rlaif, so the paper's headline is not reproduced")


def _series(history: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in history if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]


def _ends(values: list[float], share: float) -> tuple[float, float]:
    """Mean of the first and of the last ``share`` of the logged steps (at least one step each)."""
    k = max(1, int(len(values) * share))
    return sum(values[:k]) / k, sum(values[-k:]) / k


@check("zephyr_smoke")
def zephyr_smoke(study: StudyData, params: dict) -> CheckResult:
    """The DPO run (``run``, default ``ddpo``) finished, trained on the dataset's own pairs (at least
    ``min_pairs``, no judge calls), and its reward accuracy and margin on the training pairs rose
    from the first to the last ``window`` share of logged steps, the accuracy ending above
    ``min_final_accuracy`` (0.5: chance)."""
    name = params.get("run", "ddpo")
    min_pairs = int(params.get("min_pairs", 1))
    window = float(params.get("window", 1 / 3))
    min_acc = float(params.get("min_final_accuracy", 0.5))
    min_gain = float(params.get("min_margin_gain", 0.0))
    crit: list[Criterion] = []
    r = study.runs.get(name)
    done = r is not None and r.complete
    crit.append(Criterion("finished", f"the DPO run '{name}' finished", done, "true", done,
                          why="" if done else (f"no run '{name}' in study.runs" if r is None else str(r.problem))))
    values: dict = {"note": NOT_MEASURED}
    if not done:
        for n, claim in (("trained_on_data_pairs", "trained on the dataset's labelled pairs"),
                         ("reward_accuracy_rose", "DPO reward accuracy on the training pairs rose"),
                         ("reward_margin_rose", "DPO reward margin on the training pairs rose")):
            crit.append(missing(n, claim, "see the claim", f"run '{name}' did not finish"))
        return CheckResult(f"Zephyr dDPO recipe ({NOT_MEASURED})", crit, values)

    source = r.config.get("preferences.source")
    pairs = r.metric("preferences/from_data")
    calls = r.metric("train/judge_calls")
    ok = source == "data" and pairs is not None and pairs >= min_pairs and not calls
    crit.append(Criterion("trained_on_data_pairs", "trained on the dataset's labelled pairs (preferences.source=data, "
                          "no judge calls)", pairs, f">= {min_pairs} pairs from the data, 0 judge calls", ok,
                          why="" if ok else f"preferences.source={source}, preferences/from_data={pairs}, "
                                            f"train/judge_calls={calls}"))

    acc, margins = _series(r.history, "train/rewards/accuracies"), _series(r.history, "train/rewards/margins")
    acc_claim = f"DPO reward accuracy on the training pairs rose (first vs last {window:.0%} of steps) above chance"
    if len(acc) < 2:
        crit.append(missing("reward_accuracy_rose", acc_claim, f"last > first and last > {min_acc:g}",
                            f"needs >= 2 logged steps of train/rewards/accuracies in train_history.jsonl, got {len(acc)}"))
    else:
        first, last = _ends(acc, window)
        values.update(accuracy_first=round(first, 4), accuracy_last=round(last, 4))
        crit.append(Criterion("reward_accuracy_rose", acc_claim, round(last, 4),
                              f"> first ({first:.3g}) and > {min_acc:g}", last > first and last > min_acc))
    m_claim = f"DPO reward margin (chosen - rejected) on the training pairs rose (first vs last {window:.0%} of steps)"
    if len(margins) < 2:
        crit.append(missing("reward_margin_rose", m_claim, f"last - first > {min_gain:g}",
                            f"needs >= 2 logged steps of train/rewards/margins in train_history.jsonl, got {len(margins)}"))
    else:
        first, last = _ends(margins, window)
        values.update(margin_first=round(first, 4), margin_last=round(last, 4))
        crit.append(Criterion("reward_margin_rose", m_claim, round(last - first, 4), f"> {min_gain:g}",
                              last - first > min_gain))
    values["logged_steps"] = len(acc)
    return CheckResult(f"Zephyr dDPO recipe: offline DPO on the dataset's pairs fits them ({NOT_MEASURED})", crit,
                       values)
