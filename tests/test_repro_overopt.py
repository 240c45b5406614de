"""The overoptimization reproduction (Gao et al. 2022): the best-of-n estimator against brute-force
enumeration, the functional-form fits, the check on synthetic curves (cases that pass and cases
that must fail), bad analysis options, and the study end to end on the tiny model."""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics

import pytest
from conftest import compose_config

from rlaif.comparison.runs import RunRecord
from rlaif.config import ConfigError
from rlaif.reproductions.checks import StudyData, run_check
from rlaif.reproductions.overoptimization import (
    best_of_n_expectation,
    bon_weights,
    fit_form,
    form_value,
    kl_bon,
    validate_options,
)

# ---------------------------------------------------------------------------------------------
# The estimator


@pytest.mark.parametrize("m,n", [(5, 1), (5, 2), (6, 3), (7, 4), (6, 6), (8, 5)])
def test_best_of_n_estimator_equals_enumerating_every_subset(m, n):
    rng = random.Random(m * 10 + n)
    proxy = [rng.gauss(0, 1) for _ in range(m)]
    gold = [rng.gauss(0, 1) for _ in range(m)]
    subsets = list(itertools.combinations(range(m), n))
    best = [max(s, key=lambda i: proxy[i]) for s in subsets]
    want_p = statistics.fmean(proxy[i] for i in best)
    want_g = statistics.fmean(gold[i] for i in best)
    got_p, got_g = best_of_n_expectation(proxy, gold, n)
    assert got_p == pytest.approx(want_p, abs=1e-12) and got_g == pytest.approx(want_g, abs=1e-12)


def test_ties_share_their_gold_and_weights_sum_to_one():
    # proxy ties between samples 1 and 2: a random tie-break picks either half the time
    proxy, gold = [0.0, 1.0, 1.0], [5.0, 2.0, 4.0]
    subsets = list(itertools.combinations(range(3), 2))
    want = statistics.fmean(statistics.fmean(gold[i] for i in s if proxy[i] == max(proxy[j] for j in s))
                            for s in subsets)
    assert best_of_n_expectation(proxy, gold, 2)[1] == pytest.approx(want)
    for m, n in [(64, 1), (64, 17), (64, 64), (10, 3)]:
        assert sum(bon_weights(m, n)) == pytest.approx(1.0)
    assert best_of_n_expectation(proxy, gold, 1)[1] == pytest.approx(statistics.fmean(gold))
    with pytest.raises(ValueError, match="1 <= n <= 3"):
        bon_weights(3, 4)


def test_kl_bon():
    assert kl_bon(1) == 0.0
    assert kl_bon(64) == pytest.approx(math.log(64) - 63 / 64)


# ---------------------------------------------------------------------------------------------
# The fits


@pytest.mark.parametrize("form,alpha,beta", [("bon", 0.8, 0.3), ("rl", 0.5, 0.4), ("rl", 0.2, -0.1)])
def test_fit_recovers_the_coefficients_of_an_exact_curve(form, alpha, beta):
    d = [0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 1.8]
    fit = fit_form(d, [form_value(x, alpha, beta, form) for x in d], form)
    assert fit["alpha"] == pytest.approx(alpha, abs=1e-9) and fit["beta"] == pytest.approx(beta, abs=1e-9)
    assert fit["r2"] == pytest.approx(1.0) and fit["points"] == 6
    if beta > 0:
        want = alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1)
        assert fit["peak_d"] == pytest.approx(want)
    else:
        assert fit["peak_d"] == math.inf
    assert fit_form([0.0, 1.0], [0.0, 1.0], form)["alpha"] is None  # one point with d > 0: no fit


# ---------------------------------------------------------------------------------------------
# The check, on synthetic curves

BON_D = [math.sqrt(kl_bon(n)) for n in (1, 2, 4, 8, 16, 32, 64)]


def _bon(gold, proxy, sem=0.01):
    return {"n": [1, 2, 4, 8, 16, 32, 64], "d": BON_D, "kl": [x * x for x in BON_D], "gold_gain": gold,
            "proxy_gain": proxy, "gold_gain_sem": [0.0] + [sem] * 6}


def _rl(d, gold, proxy, sem=0.01):
    return {"members": [f"ppo_{i}" for i in range(len(d))], "d": d, "gold_gain": gold, "proxy_gain": proxy,
            "gold_gain_sem": [sem] * len(d)}


def _study(bon, rl, acc=0.7):
    runs = {m: RunRecord(path=f"/nowhere/{m}", name=m, config={"optimizer.name": "ppo"},
                         summary={"reward_model/accuracy": acc, "eval/kl": 1.0}) for m in rl["members"]}
    return StudyData(runs=runs, analysis={"bon": bon, "rl": rl})


PARAMS = {"bon_min_proxy_spearman": 0.99, "rl_min_proxy_spearman": 0.79, "min_gold_rise_sem": 2.0,
          "max_peak_over_range": 1.5, "min_fit_r2": 0.8, "min_bon_points": 3, "min_rl_points": 3}
RISE_FALL_BON = [form_value(x, 0.3, 0.15, "bon") for x in BON_D]  # peak at d = 1.0, inside d_max = 1.78
RISING_PROXY_BON = [0.6 * x for x in BON_D]
RL_D = [0.5, 1.2, 2.0]
RISE_FALL_RL = [form_value(x, 0.2, 0.3, "rl") for x in RL_D]  # peak at exp(2/3 - 1) = 0.72
RISING_PROXY_RL = [0.4, 0.9, 1.5]


def test_check_passes_when_gold_rises_then_falls_while_the_proxy_rises():
    r = run_check("overoptimization", _study(_bon(RISE_FALL_BON, RISING_PROXY_BON),
                                             _rl(RL_D, RISE_FALL_RL, RISING_PROXY_RL)), PARAMS)
    assert r.passed, r.lines()
    assert {c.name for c in r.criteria} == {"bon_proxy_rises", "bon_gold_rises", "bon_gold_turns", "bon_fit_r2",
                                            "rl_proxy_rises", "rl_gold_rises", "rl_gold_turns"}
    by = {c.name: c for c in r.criteria}
    assert by["bon_gold_rises"].expected == ">= 2 sem" and isinstance(by["bon_gold_rises"].measured, float)
    assert by["bon_fit_r2"].measured == pytest.approx(1.0) and by["bon_fit_r2"].expected == ">= 0.8"
    assert r.values["bon_gold_alpha"] == pytest.approx(0.3, abs=1e-3)
    assert r.values["bon_gold_beta"] == pytest.approx(0.15, abs=1e-3)
    assert r.values["rl_gold_beta"] == pytest.approx(0.3, abs=1e-3)
    assert r.values["proxy_heldout_pair_accuracy"] == 0.7


def _failed(study) -> set[str]:
    r = run_check("overoptimization", study, PARAMS)
    assert not r.passed
    return {c.name for c in r.criteria if not c.passed}


def test_check_fails_when_the_gold_keeps_rising():
    steady = [0.2 * x for x in BON_D]  # linear: beta = 0, no peak
    assert _failed(_study(_bon(steady, RISING_PROXY_BON), _rl(RL_D, RISE_FALL_RL, RISING_PROXY_RL))) == {
        "bon_gold_turns"}
    rl_steady = [0.1, 0.25, 0.4]
    assert _failed(_study(_bon(RISE_FALL_BON, RISING_PROXY_BON), _rl(RL_D, rl_steady, RISING_PROXY_RL))) == {
        "rl_gold_turns"}


def test_check_fails_when_the_gold_never_rises_or_the_rise_is_noise():
    falling = [-0.1 * x for x in BON_D]
    assert "bon_gold_rises" in _failed(_study(_bon(falling, RISING_PROXY_BON),
                                              _rl(RL_D, RISE_FALL_RL, RISING_PROXY_RL)))
    noisy = _bon(RISE_FALL_BON, RISING_PROXY_BON, sem=0.2)  # peak gain 0.15 < 2 x 0.2
    assert _failed(_study(noisy, _rl(RL_D, RISE_FALL_RL, RISING_PROXY_RL))) == {"bon_gold_rises"}


def test_check_fails_when_the_proxy_does_not_keep_rising():
    rl_proxy_falls = [0.9, 0.5, 0.1]
    assert "rl_proxy_rises" in _failed(_study(_bon(RISE_FALL_BON, RISING_PROXY_BON),
                                              _rl(RL_D, RISE_FALL_RL, rl_proxy_falls)))
    flat_proxy = [0.0] * 7
    assert "bon_proxy_rises" in _failed(_study(_bon(RISE_FALL_BON, flat_proxy),
                                               _rl(RL_D, RISE_FALL_RL, RISING_PROXY_RL)))


def test_check_fails_on_a_poor_fit_and_on_missing_curves():
    zigzag = [0.0, 0.2, -0.1, 0.25, -0.15, 0.2, -0.1]
    assert "bon_fit_r2" in _failed(_study(_bon(zigzag, RISING_PROXY_BON), _rl(RL_D, RISE_FALL_RL, RISING_PROXY_RL)))
    r = run_check("overoptimization", StudyData(runs={}, analysis={}), PARAMS)
    assert not r.passed and all(c.measured is None and "analysis" in c.why for c in r.criteria)
    few = _rl(RL_D[:2], RISE_FALL_RL[:2], RISING_PROXY_RL[:2])
    r = run_check("overoptimization", _study(_bon(RISE_FALL_BON, RISING_PROXY_BON), few), PARAMS)
    assert {c.name for c in r.criteria if not c.passed} == {"rl_proxy_rises", "rl_gold_rises", "rl_gold_turns"}
    assert all("needs >= 3 points" in c.why for c in r.criteria if c.name.startswith("rl_"))


# ---------------------------------------------------------------------------------------------
# Bad options, before anything runs


@pytest.mark.parametrize("options,key", [({"ns": [1, 2, 128]}, "samples_per_prompt"), ({"ns": [2, 4]}, "ns"),
                                         ({"ns": [4, 2, 1]}, "ns"), ({"samples_per_prompt": 1}, "samples_per_prompt"),
                                         ({"n_max": 4}, "n_max")])
def test_bad_analysis_options_name_the_key(options, key):
    with pytest.raises(ValueError, match=f"study.analysis_options.*{key}"):
        validate_options(options)


def test_the_study_refuses_bad_analysis_options_before_any_run(tmp_path):
    from rlaif.reproductions.study import run_study

    base = compose_config(["experiment=paper/overoptimization_cpu"])
    too_many = 2 * int(base.study.analysis_options.samples_per_prompt)  # more samples than the study draws
    ov = ["experiment=paper/overoptimization_cpu", f"study.analysis_options.ns=[1,2,{too_many}]", "tracker=none",
          f"cache.dir={tmp_path / 'cache'}"]
    with pytest.raises(ConfigError, match="study.analysis_options.*samples_per_prompt"):
        run_study(compose_config(ov), tmp_path / "study", ov)
    assert not (tmp_path / "study" / "runs").exists()


def test_the_study_refuses_an_analysis_it_cannot_import(tmp_path):
    from rlaif.reproductions.study import run_study

    ov = ["experiment=paper/overoptimization_cpu", "study.analysis=rlaif.reproductions.overoptimization:nope",
          "tracker=none", f"cache.dir={tmp_path / 'cache'}"]
    with pytest.raises(ConfigError, match="study.analysis: cannot load"):
        run_study(compose_config(ov), tmp_path / "study", ov)
    assert not (tmp_path / "study" / "runs").exists()


def test_both_configs_compose_and_validate():
    from rlaif.config import validate
    from rlaif.reproductions.registry import REGISTRY
    from rlaif.reproductions.study import check_analysis, member_configs

    for exp in ("paper/overoptimization_cpu", "paper/overoptimization"):
        cfg = compose_config([f"experiment={exp}"])
        validate(cfg)
        check_analysis(cfg)
        assert cfg.reproduction.check == REGISTRY["overoptimization"].check == "overoptimization"
        members = member_configs(cfg, [f"experiment={exp}"])
        assert all(m.optimizer.reward_source == "reward_model" and m.optimizer.name == "ppo"
                   for _, m in members.values())


# ---------------------------------------------------------------------------------------------
# End to end on the tiny model: two PPO members against a proxy, then the analysis and the check


def test_study_end_to_end_on_the_tiny_model(tiny_model, tmp_path):
    from omegaconf import OmegaConf

    from rlaif.reproductions.study import run_study

    ov = ["experiment=paper/overoptimization_cpu", f"policy.model={tiny_model}", f"cache.dir={tmp_path / 'cache'}",
          "tracker=none", "data.num_train=4", "data.num_eval=2", "generator.num_candidates=3",
          "generator.max_new_tokens=6", "generator.dtype=float32", "evaluation.samples_per_prompt=2",
          # the tiny model's random text: VADER scores most of it 0 and can leave no pair at all, so the
          # contrastive judge (which always separates candidates) labels the proxy's pairs
          "judge=contrastive", "judge.dtype=float32", "preferences.min_margin=0.0",
          # the config's probe proxy, on the tiny model's first block of two
          "reward_model.probe_layer=1", "reward_model.eval_fraction=0", "reward_model.judge_dtype=float32",
          "study.analysis_options.samples_per_prompt=4", "study.analysis_options.ns=[1,2,4]",
          "study.analysis_options.num_prompts=2"]
    cfg = compose_config(ov)
    ppo = ["optimizer=ppo", "optimizer.reward_source=reward_model", "optimizer.kl_coef=0.0",
           "optimizer.learning_rate=1e-3", "optimizer.rollout_batch_size=4", "optimizer.ppo_epochs=1",
           "optimizer.num_minibatches=1", "optimizer.mixed_precision=no"]
    cfg.study.runs = OmegaConf.create({"ppo_a": ppo + ["optimizer.total_episodes=4"],
                                       "ppo_b": ppo + ["optimizer.total_episodes=8"]})
    out = tmp_path / "study"
    summary = run_study(cfg, out, ov)
    analysis = json.loads((out / "analysis.json").read_text())["values"]
    bon, rl = analysis["bon"], analysis["rl"]
    assert bon["n"] == [1, 2, 4] and bon["prompts"] == 2 and bon["gold_gain"][0] == 0.0
    assert bon["kl"] == pytest.approx([kl_bon(n) for n in (1, 2, 4)], abs=1e-6)
    assert all(b >= a - 1e-9 for a, b in zip(bon["proxy"], bon["proxy"][1:], strict=False))  # E[max] grows with n
    rows = [json.loads(x) for x in (out / "bon_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 4 and all(isinstance(r["proxy"], float) for r in rows)
    # the estimator over the written samples reproduces the curve
    by = {}
    for r in rows:
        by.setdefault(r["prompt_id"], []).append(r)
    want = statistics.fmean(best_of_n_expectation([r["proxy"] for r in v], [r["gold"] for r in v], 2)[1]
                            for v in by.values())
    assert bon["gold"][1] == pytest.approx(want, abs=1e-5)
    assert sorted(rl["members"]) == ["ppo_a", "ppo_b"] and len(rl["d"]) == 2
    assert (out / "runs" / "ppo_a" / "reward_model").resolve() == (out / "runs" / "ppo_b" / "reward_model").resolve()
    assert (out / "overoptimization.png").stat().st_size > 0 and "plot_error" not in analysis
    # two RL members are too few for the RL criteria: the check says so and fails
    assert summary["reproduction/check"].startswith("Against a proxy reward model")
    assert summary["reproduction/passed"] is False
    assert "needs >= 3 points" in summary["reproduction/rl_gold_turns/why"]
    assert "analysis/bon_gold_alpha" in summary
