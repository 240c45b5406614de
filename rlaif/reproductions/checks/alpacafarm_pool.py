"""alpacafarm_pool: Dubois et al. 2023, AlpacaFarm (arXiv:2305.14387; numbers [S]).

The paper validates its simulator by ranking methods (trained and evaluated with a pool of
simulated annotators whose labels are 25% flipped) against the ranking from human-trained,
human-evaluated runs: Spearman 0.98 over 11 methods. Here each member is one method; its win rate
over the reference policy under the noisy pool (the run's judge: ``pool_metric``) and under the
gold labeller (``gold_metric``) rank the methods, and the check compares the two rankings.

Criteria: every method measured under both; every member's pool really flips ``flip_rate`` of its
labels (its resolved ``judge.flip_rate``); Spearman(pool, gold) >= ``min_spearman``. With k methods
Spearman takes few values (k = 3: -1, -0.5, 0.5, 1), so a threshold near the paper's 0.98 means
"the same ranking" and anything lower allows a swap; the report says so.
"""

from __future__ import annotations

import math
from typing import Any

from rlaif.reproductions.checks.base import CheckResult, Criterion, StudyData, check, missing, spearman


def ranking(scores: dict[str, float]) -> list[str]:
    """Method names, best first (ties keep the study's order)."""
    return [n for n, _ in sorted(scores.items(), key=lambda kv: -kv[1])]


@check("alpacafarm_pool")
def alpacafarm_pool(study: StudyData, params: dict) -> CheckResult:
    methods = list(params.get("methods") or study.runs)
    pool_key = params.get("pool_metric", "eval/win_rate")
    gold_key = params.get("gold_metric", "eval/heldout_win_rate")
    min_rho = float(params.get("min_spearman", 0.98))
    flip = float(params.get("flip_rate", 0.25))
    crit: list[Criterion] = []
    values: dict[str, Any] = {}

    pool, gold, absent = {}, {}, []
    for m in methods:
        p, g = study.metric(m, pool_key), study.metric(m, gold_key)
        if p is None or g is None:
            absent.append(m)
        else:
            pool[m], gold[m] = p, g
    claim = f"every method measured under the noisy pool ({pool_key}) and the gold ({gold_key})"
    exp = ", ".join(methods)
    crit.append(Criterion("methods_measured", claim, len(pool), f"{len(methods)} ({exp})", not absent and len(methods) >= 3,
                          why=(f"missing: {', '.join(absent)}" if absent else
                               "" if len(methods) >= 3 else "a ranking needs >= 3 methods")))

    claim = f"each method's labels come from a pool flipping {flip:g} of its labels"
    rates = {m: study.runs[m].config.get("judge.flip_rate") for m in methods if m in study.runs}
    values["flip_rate"] = rates
    bad = [m for m in methods if not isinstance(rates.get(m), (int, float)) or not math.isclose(rates[m], flip)]
    crit.append(Criterion("pool_is_noisy", claim, sorted({r for r in rates.values() if r is not None}) or None,
                          f"judge.flip_rate == {flip:g} for every method", not bad,
                          why=f"other or no flip_rate: {', '.join(bad)}" if bad else ""))

    claim = "the noisy pool ranks the methods as the gold does (Spearman of their win rates)"
    exp = f">= {min_rho:g} (paper 0.98 over 11 methods; with {len(methods)} methods rho takes few values)"
    if len(pool) < 3:
        crit.append(missing("ranking_spearman", claim, exp, f"needs >= 3 measured methods, got {len(pool)}"))
    else:
        names = list(pool)
        rho = spearman([pool[n] for n in names], [gold[n] for n in names])
        values.update(pool_ranking=ranking(pool), gold_ranking=ranking(gold),
                      pool_win_rate={n: round(v, 4) for n, v in pool.items()},
                      gold_win_rate={n: round(v, 4) for n, v in gold.items()})
        crit.append(Criterion("ranking_spearman", claim, None if math.isnan(rho) else round(rho, 3), exp,
                              math.isfinite(rho) and rho >= min_rho,
                              why="" if math.isfinite(rho) else "a constant win rate: no ranking"))
    return CheckResult("A noisy simulated annotator pool ranks methods as the gold labeller does (Dubois et al. 2023)",
                       crit, values)
