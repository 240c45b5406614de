"""Reproductions oaif (Guo et al. 2024) and self_rewarding (Yuan et al. 2024): their checks on
synthetic metrics (cases that must pass and cases that must fail), their configs composed and
validated, and the self-rewarding per-round analysis on the tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import compose_config

from rlaif.comparison.runs import RunRecord, read_run
from rlaif.config import validate
from rlaif.reproductions.checks import StudyData, run_check
from rlaif.reproductions.self_rewarding import AnalysisError, per_round, round_models
from rlaif.reproductions.study import member_configs


def _run(name: str, **summary) -> RunRecord:
    return RunRecord(path=Path("/nonexistent") / name, name=name, config={}, summary=summary)


def _oaif_runs(off_gold=0.20, on_gold=0.25, sem=0.03, on_len=20.0, brief_len=12.0, calls=(128, 128, 128),
               on_gain=0.1) -> StudyData:
    off_c, on_c, brief_c = calls
    return StudyData(runs={
        "offline_dpo": _run("offline_dpo", **{"eval/gold_reward_policy": off_gold, "eval/gold_reward_policy_sem": sem,
                                              "eval/gold_reward_gain": 0.05, "eval/length_policy": 21.0,
                                              "train/judge_calls": off_c}),
        "online_dpo": _run("online_dpo", **{"eval/gold_reward_policy": on_gold, "eval/gold_reward_policy_sem": sem,
                                            "eval/gold_reward_gain": on_gain, "eval/length_policy": on_len,
                                            "train/judge_calls": on_c}),
        "online_dpo_brief": _run("online_dpo_brief", **{"eval/gold_reward_policy": 0.1, "eval/gold_reward_policy_sem": sem,
                                                        "eval/length_policy": brief_len, "train/judge_calls": brief_c}),
    })


OAIF_PARAMS = {"tolerance_sem": 2.0, "min_online_gain": 0.0, "max_length_ratio": 0.8, "judge_calls_match": 0.9}


def _failed(result) -> set[str]:
    return {c.name for c in result.criteria if not c.passed}


def test_oaif_check_passes_when_online_matches_offline_and_brief_is_shorter():
    r = run_check("oaif", _oaif_runs(), OAIF_PARAMS)
    assert r.passed, r.lines()
    assert {c.name for c in r.criteria} == {"online_at_or_above_offline", "online_gain", "judge_calls_matched",
                                            "brief_shortens"}
    assert r.values["length_brief"] == 12.0
    # slightly below offline but within 2 standard errors of the difference (2 * 0.042 = 0.085) still passes
    assert run_check("oaif", _oaif_runs(on_gold=0.14), OAIF_PARAMS).passed


@pytest.mark.parametrize("case, failing", [
    (dict(on_gold=0.10), {"online_at_or_above_offline"}),            # 0.10 below, > 2 sem of the difference
    (dict(brief_len=18.0), {"brief_shortens"}),                      # 0.9x: not short enough
    (dict(brief_len=25.0), {"brief_shortens"}),                      # longer
    (dict(on_gain=-0.02), {"online_gain"}),                          # online DPO learnt nothing
    (dict(calls=(128, 64, 128)), {"judge_calls_matched"}),           # half the budget
    (dict(calls=(128, 128, 256)), {"judge_calls_matched"}),          # twice the budget
])
def test_oaif_check_fails(case, failing):
    r = run_check("oaif", _oaif_runs(**case), OAIF_PARAMS)
    assert not r.passed and _failed(r) == failing, r.lines()


def test_oaif_check_reports_missing_runs_as_failures():
    data = _oaif_runs()
    del data.runs["online_dpo_brief"]
    r = run_check("oaif", data, OAIF_PARAMS)
    assert _failed(r) == {"brief_shortens", "judge_calls_matched"}
    assert all(c.why for c in r.criteria if not c.passed)
    empty = run_check("oaif", StudyData(runs={}), OAIF_PARAMS)
    assert not empty.passed and all(c.measured is None for c in empty.criteria)


def test_oaif_check_reads_the_metric_it_is_given():
    """Full scale has no gold: the held-out judge's win rate, with min_online_gain 0.5."""
    data = _oaif_runs()
    for name, w in (("offline_dpo", 0.55), ("online_dpo", 0.62), ("online_dpo_brief", 0.5)):
        data.runs[name].summary["eval/heldout_win_rate"] = w
    params = {**OAIF_PARAMS, "gold_metric": "eval/heldout_win_rate", "gain_metric": "eval/heldout_win_rate",
              "min_online_gain": 0.5}
    r = run_check("oaif", data, params)
    assert r.passed, r.lines()
    data.runs["online_dpo"].summary["eval/heldout_win_rate"] = 0.45
    assert _failed(run_check("oaif", data, params)) == {"online_at_or_above_offline", "online_gain"}


def _sr(win=(0.5, 0.55, 0.6, 0.64), acc=(0.5, 0.55, 0.6, 0.6), length=(24.0, 23.5, 23.0, 22.0), rounds=3):
    return StudyData(runs={}, analysis={"rounds": rounds, "win_rate": list(win), "audit_accuracy": list(acc),
                                        "length": list(length), "gold": [0.1, 0.2, 0.3, 0.35]})


SR_PARAMS = {"min_win_rate_rise": 0.0, "step_tolerance": 0.05}


def test_self_rewarding_check_passes_on_rising_win_rate():
    r = run_check("self_rewarding", _sr(), SR_PARAMS)
    assert r.passed, r.lines()
    assert r.criteria[0].measured == [0.55, 0.6, 0.64]  # M1..M3
    assert r.values["audit_accuracy_change"] == pytest.approx(0.1)
    # a dip within the tolerance still counts as rising
    assert run_check("self_rewarding", _sr(win=(0.5, 0.58, 0.55, 0.62)), SR_PARAMS).passed


@pytest.mark.parametrize("analysis, failing", [
    (dict(win=(0.5, 0.6, 0.58, 0.55)), {"win_rate_rises"}),             # M3 below M1
    (dict(win=(0.5, 0.6, 0.6, 0.6)), {"win_rate_rises"}),               # flat: does not rise
    (dict(win=(0.5, 0.55, 0.45, 0.6)), {"win_rate_rises"}),             # a step down by 0.10 > 0.05
    (dict(acc=(0.5, None, 0.6, 0.6)), {"judge_accuracy_each_iteration"}),  # an iteration without accuracy
    (dict(length=(24.0, 23.0, 22.0)), {"length_each_iteration"}),        # M3's length missing
])
def test_self_rewarding_check_fails(analysis, failing):
    r = run_check("self_rewarding", _sr(**analysis), SR_PARAMS)
    assert not r.passed and _failed(r) == failing, r.lines()


def test_self_rewarding_check_without_analysis_fails_saying_why():
    r = run_check("self_rewarding", StudyData(runs={}), SR_PARAMS)
    assert not r.passed and all(c.why for c in r.criteria)
    one = run_check("self_rewarding", _sr(win=(0.5, 0.6), acc=(0.5, 0.6), length=(20.0, 21.0), rounds=1), SR_PARAMS)
    assert _failed(one) == {"win_rate_rises"}  # one round cannot show a rise


@pytest.mark.parametrize("name", ["oaif_cpu", "oaif", "self_rewarding_cpu", "self_rewarding"])
def test_paper_configs_compose_and_validate(name):
    ov = [f"experiment=paper/{name}"]
    cfg = compose_config(ov)
    validate(cfg)
    members = member_configs(cfg, ov)
    assert cfg.reproduction.check in ("oaif", "self_rewarding")
    if name.startswith("oaif"):
        assert set(members) == {"offline_dpo", "online_dpo", "online_dpo_brief"}
        assert {m.optimizer.name for _, m in members.values()} == {"dpo", "online_dpo"}
        assert all(m.budget.judge_calls == "offline" for _, m in members.values())
    else:
        (_, m), = members.values()
        assert m.optimizer.keep_rounds and m.optimizer.rounds >= 2
        assert (m.optimizer.min_rating, m.optimizer.max_rating) == (0, 5)  # the additive 5-point scale
        assert "additive" in m.criteria.pointwise.question


def test_self_rewarding_rating_scale_is_checked_at_validation():
    from rlaif.config import ConfigError

    cfg = compose_config(["optimizer=self_rewarding", "optimizer.min_rating=5", "optimizer.max_rating=5"])
    with pytest.raises(ConfigError, match="min_rating"):
        validate(cfg)
    validate(compose_config(["optimizer=self_rewarding", "optimizer.min_rating=0", "optimizer.max_rating=5"]))


def test_per_round_analysis_rejects_bad_input_before_loading(tmp_path):
    data = StudyData(runs={})
    with pytest.raises(AnalysisError, match="no finished member"):
        per_round(None, data, tmp_path, {"run": "self_rewarding"})
    with pytest.raises(AnalysisError, match="audit_criteria"):
        per_round(None, data, tmp_path, {"audit_criteria": "some"})
    # a run that did not keep its rounds: the error names optimizer.keep_rounds
    entry = tmp_path / "entry"
    (entry / "model").mkdir(parents=True)
    (entry / "model" / "config.json").write_text("{}")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(entry / "model", run / "policy")
    with pytest.raises(AnalysisError, match="keep_rounds"):
        round_models(run, 3)
    assert round_models(run, 1) == {1: (entry / "model").resolve()}


@pytest.fixture(scope="module")
def self_rewarding_run(tiny_model, tmp_path_factory):
    """A finished 2-round self-rewarding run of the tiny model that kept its rounds."""
    from rlaif import pipeline

    tmp = tmp_path_factory.mktemp("sr")
    ov = ["experiment=paper/self_rewarding_cpu", f"policy.model={tiny_model}", f"cache.dir={tmp / 'cache'}",
          "data.num_train=4", "data.num_eval=2", "generator.max_new_tokens=6", "generator.dtype=float32",
          "judge.dtype=float32", "optimizer.rounds=2", "optimizer.num_candidates=3", "optimizer.judge_dtype=float32",
          "optimizer.dpo.mixed_precision=no", "optimizer.dpo.epochs=1", "optimizer.dpo.learning_rate=1e-3",
          "evaluation.samples_per_prompt=2", "evaluation.dtype=float32", "tracker=none"]
    cfg = compose_config(ov)
    pipeline.run(cfg, tmp / "runs" / "self_rewarding")
    return cfg, tmp


def test_per_round_analysis_on_the_tiny_model(self_rewarding_run):
    cfg, tmp = self_rewarding_run
    run = tmp / "runs" / "self_rewarding"
    models = round_models(run, 2)
    assert (models[1] / "model.safetensors").is_file() and models[2] == (run / "policy").resolve()
    data = StudyData(runs={"self_rewarding": read_run(run, tmp / "runs")}, folder=tmp)
    values = per_round(cfg, data, tmp, dict(cfg.study.analysis_options))
    json.dumps(values)  # cached in analysis.json
    assert values["iterations"] == ["M0", "M1", "M2"]
    for key in ("win_rate", "gold", "length", "audit_accuracy", "kl", "length_drift"):
        assert len(values[key]) == 3, key
    assert values["win_rate"][0] == 0.5 and values["kl"][0] == 0.0
    assert all(0.0 <= a <= 1.0 for a in values["audit_accuracy"])
    assert values["audit_pairs"] == 25  # the bundled positive_sentiment pairs
    summary = data.runs["self_rewarding"].summary  # M2 is the trained policy: the run's own evaluation
    assert values["win_rate"][2] == round(summary["eval/win_rate"], 4)
    assert values["length"][0] == round(summary["eval/length_reference"], 4)
    assert (tmp / "self_rewarding_rounds.png").is_file()
    result = run_check("self_rewarding", StudyData(runs=data.runs, analysis=values), dict(cfg.reproduction.expected))
    assert {c.name for c in result.criteria if c.passed} >= {"judge_accuracy_each_iteration", "length_each_iteration"}


@pytest.mark.slow
def test_oaif_study_runs_end_to_end_on_the_tiny_model(tiny_model, tmp_path):
    tmp = tmp_path
    from rlaif.reproductions.study import run_study

    ov = ["experiment=paper/oaif_cpu", f"policy.model={tiny_model}", f"cache.dir={tmp / 'cache'}",
          "data.num_train=8", "data.num_eval=2", "generator.num_candidates=4", "generator.max_new_tokens=6",
          "generator.dtype=float32", "judge.dtype=float32", "evaluation.samples_per_prompt=2", "tracker=none",
          "optimizer.mixed_precision=no"]
    summary = run_study(compose_config(ov), tmp / "study", ov)
    assert summary["reproduction/check"].startswith("Online AI feedback at least matches")
    for name in ("offline_dpo", "online_dpo", "online_dpo_brief"):
        assert summary[f"runs/{name}/complete"], name
        assert summary[f"runs/{name}/train/judge_calls"] == 32  # 8 prompts x 4 samples; online: 2 steps of 8 pairs
    assert (tmp / "study" / "reproduction.md").is_file()
