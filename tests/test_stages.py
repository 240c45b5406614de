"""Stages declare their inputs and the cache key is derived from the declaration.

Every stage of every optimizer and judge kind is walked: each config key the stage can see must
change its cache key, unless the stage lists it as not changing the output (where a model
lives, how often to checkpoint); and a stage can see only what it declares, so an input that is
used but not declared fails instead of silently reusing a stale cache entry.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from conftest import compose_config
from hydra.utils import instantiate

from rlaif import precision, stages
from rlaif.stages.base import Inputs, Stage, UndeclaredInput, View, declared_config, key_material, leaf_paths
from rlaif.stages.context import RunContext

# One config per shape of the data flow (each optimizer family, judge kind and generator).
CONFIGS = {
    "dpo": [],
    "ppo_direct": ["optimizer=ppo"],
    "grpo_distilled": ["optimizer=grpo", "optimizer.reward_source=reward_model"],
    "best_of_n_pairwise": ["optimizer=best_of_n", "judge=pairwise", "optimizer.reward_reference=reference_policy"],
    "self_rewarding": ["optimizer=self_rewarding"],
    "api_judge_online": ["optimizer=rloo", "judge=pointwise", "judge.api={base_url: 'http://127.0.0.1:9/v1', "
                         "api_key_env: KEY, model: m, max_concurrency: 2, timeout_s: 5, max_retries: 1, backoff_s: 0.1, "
                         "max_retry_after_s: 5, requests_per_minute: 60, max_failed_share: 0.1, top_logprobs: 5, "
                         "price_per_1k_prompt: 0.1, price_per_1k_completion: 0.2}"],
    "cai": ["optimizer=cai_sft", "criteria=constitution"],
    "api_generator_panel": ["generator=api", "judge=panel", "evaluation.heldout_judge={_target_: "
                            "rlaif.judges.PointwiseJudge, kind: pointwise, model: m, dtype: float32}"],
}


def _context(overrides: list[str], tmp_path: Path) -> RunContext:
    cfg = compose_config([f"cache.dir={tmp_path / 'cache'}", "tracker=none", *overrides])
    precision.resolve_config(cfg)
    ctx = RunContext(cfg, tmp_path)
    for name in ("train_prompts", "eval_prompts", "candidates", "judgments", "verdicts", "judge_members",
                 "preferences", "gold", "labelling", "eval_reference"):
        ctx.add(**{name: [{"record": name}]})
    for name in ("policy", "judge", "generator", "trained", "reward_model"):
        ctx.set_model(name, f"identity-of-{name}")
    return ctx


def _stages(ctx: RunContext) -> list[Stage]:
    optimizer = instantiate(ctx.cfg.optimizer)
    return [stages.Generate(), stages.Judge([]), stages.Preferences(), stages.Diagnostics([]), stages.RewardModel(),
            stages.Train(optimizer), stages.EvaluateReference(), stages.Evaluate(optimizer)]


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-changed"
    if isinstance(value, list):
        return [*value, "changed"]
    return "changed"  # None, {}


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def test_every_stage_is_walked(tmp_path):
    walked = {type(s) for s in _stages(_context([], tmp_path))}
    found = {c for c in _all_subclasses(Stage) if c.__module__.startswith("rlaif.stages.")}
    assert walked == found, "a stage was added or removed: list it in _stages() here so its declaration is checked"


def _all_subclasses(cls) -> set:
    return {s for c in cls.__subclasses__() for s in {c} | _all_subclasses(c)}


@pytest.mark.parametrize("shape", list(CONFIGS))
def test_each_config_key_a_stage_sees_is_in_its_key_or_declared_as_not_changing_the_output(shape, tmp_path):
    ctx = _context(CONFIGS[shape], tmp_path)
    for stage in _stages(ctx):
        inputs = stage.inputs(ctx.cfg)
        base = key_material(stage, inputs, ctx)
        seen = leaf_paths(_container(ctx, inputs))
        assert seen, f"{stage.name} sees no config at all"
        for path in seen:
            original = copy.deepcopy(ctx.resolved)
            node = ctx.resolved
            *parents, last = path.split(".")
            for part in parents:
                node = node[part]
            node[last] = _changed(node[last])
            changed = key_material(stage, inputs, ctx) != base
            ctx.resolved = original
            if _under(path, inputs.not_output):
                assert not changed, f"{shape}: {stage.name} lists {path} as not changing its output, yet it is keyed"
            else:
                assert changed, f"{shape}: {stage.name} sees {path} but its cache key does not change with it"


def _container(ctx: RunContext, inputs: Inputs) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(declared_config(ctx.resolved, inputs.config))


def test_records_and_models_are_keyed(tmp_path):
    ctx = _context([], tmp_path)
    for stage in _stages(ctx):
        inputs = stage.inputs(ctx.cfg)
        base = key_material(stage, inputs, ctx)
        for name in inputs.records:
            rows = ctx.records[name]
            ctx.add(**{name: [{"record": "another"}]})
            assert key_material(stage, inputs, ctx) != base, f"{stage.name}: records '{name}' not keyed"
            ctx.add(**{name: rows})
        for name in inputs.models:
            ctx.set_model(name, "another identity")
            assert key_material(stage, inputs, ctx) != base, f"{stage.name}: model '{name}' not keyed"
            ctx.set_model(name, f"identity-of-{name}")


def test_not_output_entries_name_real_keys(tmp_path):
    """A misspelt ``not_output`` entry would hide nothing and mean nothing: each names a key that
    some config has, inside what the stage declares."""
    present: dict[str, set[str]] = {}
    for shape, overrides in CONFIGS.items():
        ctx = _context(overrides, tmp_path / shape)
        for stage in _stages(ctx):
            inputs = stage.inputs(ctx.cfg)
            seen = set(leaf_paths(_container(ctx, inputs))) | _inner_paths(_container(ctx, inputs))
            for path in inputs.not_output:
                assert _under(path, inputs.config), f"{stage.name}: not_output {path} is outside its config"
                present.setdefault(f"{stage.name}:{path}", set())
                if path in seen:
                    present[f"{stage.name}:{path}"].add(shape)
    missing = sorted(k for k, shapes in present.items() if not shapes)
    assert not missing, f"not_output entries that no config has: {missing}"


def _inner_paths(tree, prefix=""):
    out = set()
    if isinstance(tree, dict):
        for k, v in tree.items():
            p = f"{prefix}.{k}" if prefix else k
            out.add(p)
            out |= _inner_paths(v, p)
    return out


class _Nosy(Stage):
    """A stage that reads more than it declares."""

    name = "nosy"
    INPUTS = Inputs(config=("generator.temperature",), records=("train_prompts",))

    def __init__(self, reads: str):
        self.reads = reads

    def compute(self, v, work):
        if self.reads == "config":
            return {"x": [v.cfg.generator.top_p]}
        if self.reads == "records":
            return {"x": v.record("candidates")}
        return {"x": [v.component("judge")]}


@pytest.mark.parametrize("reads", ["config", "records", "component"])
def test_a_stage_cannot_use_an_input_it_does_not_declare(reads, tmp_path):
    ctx = _context([], tmp_path)
    v = View(_Nosy(reads), _Nosy.INPUTS, ctx)
    assert v.cfg.generator.temperature == ctx.cfg.generator.temperature  # what it declares, it sees
    with pytest.raises(Exception) as caught:
        _Nosy(reads).compute(v, None)
    if reads == "config":  # through the runner the same read becomes an UndeclaredInput naming the key
        from rlaif.stages.runner import run_stage

        with pytest.raises(UndeclaredInput, match=r"generator\.top_p"):
            run_stage(ctx, _Nosy(reads))
    else:
        assert isinstance(caught.value, UndeclaredInput) and ("candidates" in str(caught.value)
                                                               or "judge" in str(caught.value))
