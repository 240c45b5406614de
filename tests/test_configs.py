"""Every config option composes and validates; bad overrides and bad values fail early and clearly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from rlaif.config import GROUPS, ConfigError, check_overrides, conf_dir, group_options, validate
from rlaif.criteria import Criterion
from rlaif.models import ModelPool

OPTIONS = [(g, o) for g in GROUPS for o in group_options(g)]

# Combinations known to be invalid (group, option) -> reason. There should be none.
KNOWN_INVALID: dict[tuple[str, str], str] = {}


def test_every_group_has_options():
    for g in GROUPS:
        assert group_options(g), f"conf/{g}/ has no options"
    assert set(group_options("judge")) >= {"contrastive", "pairwise", "rule"}


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(group, option):
    if (group, option) in KNOWN_INVALID:
        pytest.skip(KNOWN_INVALID[(group, option)])
    cfg = compose_config([f"{group}={option}"])
    # the command-line choice really is the one composed (the experiment does not override it back)
    own = OmegaConf.to_container(OmegaConf.load(conf_dir() / group / f"{option}.yaml"), resolve=False)
    own.pop("defaults", None)  # a group file may compose others (self_rewarding's dpo block)
    if group != "experiment":
        assert set(own) <= set(cfg[group])
        for key in [k for k in ("_target_", "name", "kind") if k in own]:
            assert cfg[group][key] == own[key], f"{group}.{key}"
    if group == "judge":
        assert cfg.judge.kind == option
    if group == "criteria":
        assert cfg.criteria.name == option
    validate(cfg)


@pytest.mark.parametrize("judge", group_options("judge"))
@pytest.mark.parametrize("criteria", group_options("criteria"))
def test_every_judge_criteria_combination_validates(judge, criteria):
    validate(compose_config([f"judge={judge}", f"criteria={criteria}"]))


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_experiment_instantiates_without_loading_a_model(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    validate(cfg)
    generator = instantiate(cfg.generator)
    assert generator.num_candidates == cfg.generator.num_candidates >= 2
    assert generator.model_name == cfg.policy.model
    optimizer = instantiate(cfg.optimizer)
    if "beta" in cfg.optimizer:  # not every optimizer has one (self_rewarding: optimizer.dpo.beta)
        assert optimizer.beta == cfg.optimizer.beta
    if "lora" in cfg.optimizer:
        assert isinstance(optimizer.lora, dict)
    tracker = instantiate(cfg.tracker)
    assert hasattr(tracker, "start") and hasattr(tracker, "finish")
    pool = ModelPool()
    judge = instantiate(cfg.judge, _partial_=True)(criterion=Criterion.from_config(cfg.criteria), pool=pool)
    assert judge.kind == cfg.judge.kind
    assert judge.criterion.name == cfg.criteria.name
    assert pool._models == {} and pool._resolved == {}  # lazily loaded: nothing resolved or loaded yet


@pytest.mark.parametrize("judge", group_options("judge"))
def test_every_judge_instantiates_lazily(judge):
    cfg = compose_config([f"judge={judge}"])
    pool = ModelPool()
    j = instantiate(cfg.judge, _partial_=True)(criterion=Criterion.from_config(cfg.criteria), pool=pool)
    assert j.kind == judge
    assert pool._models == {} and pool._resolved == {} and pool._tokenizers == {}


@pytest.mark.parametrize("tracker", group_options("tracker"))
def test_every_tracker_instantiates(tracker):
    cfg = compose_config([f"tracker={tracker}"])
    t = instantiate(cfg.tracker)
    assert type(t).__name__ == cfg.tracker._target_.rsplit(".", 1)[-1]


# ---- bad overrides ------------------------------------------------------------------------------

def test_unknown_group_option_lists_choices():
    with pytest.raises(ConfigError) as e:
        check_overrides(["judge=nope"])
    msg = str(e.value)
    assert "nope" in msg
    for choice in ("contrastive", "pairwise", "rule"):
        assert choice in msg


def test_close_group_option_is_suggested():
    with pytest.raises(ConfigError, match="Did you mean 'pairwise'"):
        check_overrides(["judge=pairwse"])


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError) as e:
        check_overrides(["optimizer.betta=0.1"])
    msg = str(e.value)
    assert "optimizer.betta" in msg
    assert "Did you mean 'beta'" in msg


def test_unknown_section_is_reported():
    with pytest.raises(ConfigError, match="nosuch"):
        check_overrides(["nosuch.key=1"])


def test_unknown_key_checked_against_the_chosen_group_option():
    # judge=rule has no batch_size; judge=contrastive does
    check_overrides(["judge=contrastive", "judge.batch_size=4"])
    with pytest.raises(ConfigError, match="judge.batch_size"):
        check_overrides(["judge=rule", "judge.batch_size=4"])


@pytest.mark.parametrize("sweep", ["optimizer=dpo,nope", "optimizer=nope,dpo", "judge=choice(pairwise,nope)"])
def test_sweep_values_are_checked_each(sweep):
    with pytest.raises(ConfigError, match="nope"):
        check_overrides([sweep])


@pytest.mark.parametrize("good", [
    [], ["judge=pairwise", "criteria=hhh"], ["optimizer.beta=0.2"], ["judge=contrastive,pairwise"],
    ["+optimizer.new_key=1"], ["seed=3"], ["optimizer.lora.r=8"], ["hydra.job.chdir=true"],
])
def test_valid_overrides_pass(good):
    check_overrides(good)


def test_override_syntax_error_is_a_config_error():
    with pytest.raises(ConfigError):
        check_overrides(["optimizer.beta=[1,"])


# ---- validate ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("override", "key"), [
    ("optimizer.beta=abc", "optimizer.beta"),
    ("optimizer.beta=0", "optimizer.beta"),
    ("generator.num_candidates=1", "generator.num_candidates"),
    ("preferences.mode=bogus", "preferences.mode"),
    ("preferences.min_margin=-1", "preferences.min_margin"),
    ("generator.temperature=0", "generator.temperature"),
    ("generator.top_p=1.5", "generator.top_p"),
    ("generator.dtype=float64", "generator.dtype"),
    ("optimizer.loss_type=nope", "optimizer.loss_type"),
    ("optimizer.label_smoothing=0.7", "optimizer.label_smoothing"),
    ("optimizer.label_smoothing=0.5", "optimizer.label_smoothing"),
    ("data.template=no-placeholder", "data.template"),
    ("data.num_eval=0", "data.num_eval"),
    ("cache.enabled=maybe", "cache.enabled"),
    ("tracker.mode=sometimes", "tracker.mode"),
    ("seed=-1", "seed"),
    ("optimizer.save_steps=0", "optimizer.save_steps"),
    ("optimizer.save_steps=2.5", "optimizer.save_steps"),
    ("optimizer=grpo optimizer.reward_source=reward_model reward_model.save_steps=0", "reward_model.save_steps"),
    ("optimizer=grpo optimizer.reward_source=reward_model reward_model.learning_rate=0", "reward_model.learning_rate"),
    ("optimizer=ppo optimizer.reward_source=reward_model reward_model.batch_size=many", "reward_model.batch_size"),
])
def test_validate_names_the_bad_key(override, key):
    cfg = compose_config(override.split())
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert f"{key}:" in str(e.value)


def test_validate_lists_every_problem():
    cfg = compose_config(["optimizer.beta=abc", "generator.num_candidates=1", "preferences.mode=bogus"])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    assert "optimizer.beta" in msg and "generator.num_candidates" in msg and "preferences.mode" in msg
    assert "bogus" in msg and "best_vs_worst" in msg


def test_validate_missing_key():
    cfg = compose_config([])
    with open_dict(cfg):
        del cfg.optimizer["beta"]
    with pytest.raises(ConfigError, match="optimizer.beta: missing"):
        validate(cfg)


def test_validate_missing_group():
    cfg = compose_config([])
    with open_dict(cfg):
        del cfg["judge"]
    with pytest.raises(ConfigError, match="judge: missing config group") as e:
        validate(cfg)
    assert "pairwise" in str(e.value)


def test_pairwise_judge_needs_pairwise_wording():
    cfg = compose_config(["judge=pairwise"])
    validate(cfg)  # fine with the wording
    with open_dict(cfg):
        cfg.criteria.pairwise = None
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    assert "criteria.pairwise.question" in msg
    assert "pairwise" in msg and "positive_sentiment" in msg


def test_contrastive_judge_needs_contrastive_wording():
    cfg = compose_config(["judge=contrastive", "~criteria.contrastive.negative"])
    with pytest.raises(ConfigError, match="criteria.contrastive.negative"):
        validate(cfg)
    # the rule judge reads no wording, so the same criteria are fine with it
    validate(compose_config(["judge=rule", "~criteria.contrastive"]))


def test_criterion_require_message():
    crit = Criterion.from_config({"name": "bare", "description": "d"})
    assert crit.missing_for("pairwise") == ["pairwise.question"]
    assert crit.missing_for("rule") == []
    with pytest.raises(ValueError, match="criteria.pairwise.question"):
        crit.require("pairwise")


# ---- the console script --------------------------------------------------------------------------

def _rlaif_command() -> list[str]:
    script = Path(sys.executable).parent / "rlaif"
    if script.exists():
        return [str(script)]
    found = shutil.which("rlaif")
    if found is None:
        pytest.skip("the rlaif console script is not installed")
    return [found]


def test_cli_bad_group_exits_with_listing_from_any_directory(tmp_path):
    env = {**os.environ, "RLAIF_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    res = subprocess.run(_rlaif_command() + ["judge=nope"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode != 0
    assert "Unknown judge 'nope'" in res.stderr
    for choice in ("contrastive", "pairwise", "rule"):
        assert choice in res.stderr
    # nothing was resolved, converted or written: no model folder, no run folder
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "outputs").exists()
    assert "Traceback" not in res.stderr
