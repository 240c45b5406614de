"""The reproductions registry: every ``experiment=paper/*`` config composes and validates with all
of its study members (nothing loads), each carries the header a reader needs, each registry paper
has its configs and a registered check; and the checks' shared helpers and dpo_frontier on
synthetic metrics, where it must pass and where it must fail."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlaif.comparison.runs import RunRecord
from rlaif.config import conf_dir, validate
from rlaif.reproductions import CHECKS, REGISTRY
from rlaif.reproductions.checks import StudyData, frontier_at, run_check, spearman
from rlaif.reproductions.study import member_configs
from tests.conftest import compose_config

PAPER = conf_dir() / "experiment" / "paper"
CONFIGS = sorted(p.stem for p in PAPER.glob("*.yaml"))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_paper_config_composes_with_its_members(name):
    overrides = [f"experiment=paper/{name}"]
    cfg = compose_config(overrides)
    validate(cfg)
    assert cfg.reproduction.check in CHECKS, f"{name}: reproduction.check {cfg.reproduction.check!r} is not registered"
    assert cfg.reproduction.get("name") in REGISTRY
    assert cfg.reproduction.scale in ("cpu", "full", "smoke")
    if cfg.study.runs:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()  # member_configs composes on its own
        members = member_configs(cfg, overrides)
        assert set(members) == {k for k, v in cfg.study.runs.items() if v is not None}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_paper_config_header_says_paper_command_and_claim(name):
    text = (PAPER / f"{name}.yaml").read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    paper = REGISTRY[compose_config([f"experiment=paper/{name}"]).reproduction.name]
    assert paper.arxiv.split()[0] in header, f"{name}: header lacks arXiv:{paper.arxiv.split()[0]}"
    assert f"rlaif experiment=paper/{name}" in header, f"{name}: header lacks the command"
    assert "faithful reproduction" in header.lower(), f"{name}: header lacks what a faithful reproduction must show"


def test_every_registered_paper_has_its_configs_and_check():
    for name, paper in REGISTRY.items():
        assert name in CONFIGS, f"conf/experiment/paper/{name}.yaml (full scale) is missing"
        assert (f"{name}_cpu" if paper.cpu else f"{name}_smoke") in CONFIGS, f"{name}: no CPU-scale config"
        assert paper.check in CHECKS, f"{name}: check {paper.check!r} not registered"


# ---------------------------------------------------------------------------------------------
# Shared helpers


def test_spearman_against_hand_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)  # ties: average ranks
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1], [1]))


def test_frontier_is_the_upper_envelope_interpolated():
    pts = [(2.0, 0.4), (4.0, 0.3), (6.0, 0.6)]  # (4, 0.3) is dominated by (2, 0.4)
    assert frontier_at(pts, 2.0) == pytest.approx(0.4)
    assert frontier_at(pts, 4.0) == pytest.approx(0.5)  # between (2, .4) and (6, .6)
    assert frontier_at(pts, 10.0) == pytest.approx(0.6)  # flat beyond the last point
    assert frontier_at(pts, 1.0, origin=(0.0, 0.2)) == pytest.approx(0.3)  # from the starting policy at KL 0


# ---------------------------------------------------------------------------------------------
# dpo_frontier on synthetic studies


def _run(name: str, opt: str, kl: float, gold: float, beta: float | None = None, sem: float = 0.01,
         ref: float = 0.1) -> RunRecord:
    config = {"optimizer.name": opt, **({"optimizer.beta": beta} if beta is not None else {})}
    return RunRecord(path=Path(name), name=name, config=config,
                     summary={"eval/kl": kl, "eval/gold_reward_policy": gold, "eval/gold_reward_policy_sem": sem,
                              "eval/gold_reward_reference": ref})


PARAMS = {"tolerance_sem": 2.0, "min_share_on_or_above": 0.75, "max_spearman_beta_kl": -0.79}
PPO = [_run("ppo_kl1", "ppo", 1.0, 0.2), _run("ppo_kl3", "ppo", 3.0, 0.3), _run("ppo_kl6", "ppo", 6.0, 0.4)]


def study(dpo: list[RunRecord], ppo: list[RunRecord] = PPO) -> StudyData:
    return StudyData(runs={r.name: r for r in dpo + ppo})


def test_dpo_frontier_passes_when_dpo_dominates_and_kl_falls_with_beta():
    dpo = [_run("dpo_b0.05", "dpo", 8.0, 0.55, 0.05), _run("dpo_b0.1", "dpo", 5.0, 0.45, 0.1),
           _run("dpo_b0.5", "dpo", 2.0, 0.30, 0.5), _run("dpo_b1", "dpo", 1.0, 0.22, 1.0)]
    r = run_check("dpo_frontier", study(dpo), PARAMS)
    assert r.passed, r.lines()
    got = {c.name: c.measured for c in r.criteria}
    # the beta=0.05 point (KL 8) lies beyond 1.25 x PPO's largest KL (6): not compared
    assert got == {"dpo_on_or_above_ppo": 1.0, "matched_kl_points": 3, "beta_kl_spearman": -1.0}
    assert r.values["dpo_beyond_ppo_kl_range"] == ["dpo_b0.05"]


def test_dpo_frontier_fails_when_dpo_points_lie_beyond_ppos_kl_range():
    # far above PPO's flat extrapolation, but only one point at a KL that PPO reaches: no matched comparison
    dpo = [_run("dpo_b0.05", "dpo", 20.0, 0.9, 0.05), _run("dpo_b0.1", "dpo", 12.0, 0.8, 0.1),
           _run("dpo_b0.5", "dpo", 4.0, 0.36, 0.5)]
    r = run_check("dpo_frontier", study(dpo), PARAMS)
    c = {c.name: c for c in r.criteria}
    assert c["dpo_on_or_above_ppo"].passed and c["beta_kl_spearman"].passed
    assert c["matched_kl_points"].measured == 1 and not c["matched_kl_points"].passed
    assert not r.passed
    assert run_check("dpo_frontier", study(dpo), {**PARAMS, "kl_slack": 2.0}).passed  # 12 <= 2 x 6
    none = run_check("dpo_frontier", study(dpo[:2]), PARAMS)
    assert not none.passed and "beyond" in {c.name: c for c in none.criteria}["dpo_on_or_above_ppo"].why


def test_dpo_frontier_fails_when_dpo_lies_below_ppo():
    dpo = [_run("dpo_b0.05", "dpo", 8.0, 0.30, 0.05), _run("dpo_b0.1", "dpo", 5.0, 0.25, 0.1),
           _run("dpo_b0.5", "dpo", 2.0, 0.15, 0.5), _run("dpo_b1", "dpo", 1.0, 0.12, 1.0)]
    r = run_check("dpo_frontier", study(dpo), PARAMS)
    assert not r.passed
    c = {c.name: c for c in r.criteria}
    assert not c["dpo_on_or_above_ppo"].passed and c["beta_kl_spearman"].passed


def test_dpo_frontier_allows_noise_within_the_stated_standard_errors():
    # 0.03 below PPO's frontier at KL 3 with sem 0.02: within 2 sem, so "on" the frontier
    dpo = [_run("dpo_b0.1", "dpo", 6.0, 0.41, 0.1), _run("dpo_b0.5", "dpo", 3.0, 0.27, 0.5, sem=0.02),
           _run("dpo_b1", "dpo", 1.0, 0.21, 1.0)]
    assert run_check("dpo_frontier", study(dpo), PARAMS).passed
    tight = run_check("dpo_frontier", study(dpo), {**PARAMS, "tolerance_sem": 1.0})
    assert not tight.passed  # one point of three off the frontier: 67% < 75%


def test_dpo_frontier_fails_when_kl_does_not_fall_with_beta():
    dpo = [_run("dpo_b0.05", "dpo", 1.0, 0.3, 0.05), _run("dpo_b0.1", "dpo", 3.0, 0.4, 0.1),
           _run("dpo_b0.5", "dpo", 5.0, 0.5, 0.5), _run("dpo_b1", "dpo", 8.0, 0.6, 1.0)]
    r = run_check("dpo_frontier", study(dpo), PARAMS)
    c = {c.name: c for c in r.criteria}
    assert c["beta_kl_spearman"].measured == pytest.approx(1.0) and not c["beta_kl_spearman"].passed
    assert not r.passed


def test_dpo_frontier_fails_saying_what_is_missing():
    r = run_check("dpo_frontier", study([_run("dpo_b0.1", "dpo", 3.0, 0.5, 0.1)], ppo=[]), PARAMS)
    assert not r.passed
    assert all(c.measured is None and c.why for c in r.criteria)
    incomplete = RunRecord(path=Path("ppo_x"), name="ppo_x", problem="no summary.json")
    r2 = run_check("dpo_frontier", StudyData(runs={"dpo_b0.1": _run("dpo_b0.1", "dpo", 3.0, 0.5, 0.1),
                                                    "ppo_x": incomplete}), PARAMS)
    assert "0 ppo" in r2.criteria[0].why


def test_a_check_that_crashes_is_a_failed_check():
    r = run_check("dpo_frontier", StudyData(runs={"dpo_b": _run("dpo_b", "dpo", 3.0, 0.5, 0.1)}),
                  {"min_share_on_or_above": "not a number"})
    assert not r.passed and "ValueError" in r.criteria[0].why
    with pytest.raises(KeyError, match="unknown check"):
        run_check("no_such_check", StudyData(runs={}), {})
