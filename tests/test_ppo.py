"""PPO end to end on the tiny model: it trains, logs, respects budgets, masks unscorable episodes,
stops on non-finite losses without harming the last checkpoint, and resumes exactly.

The rewards are real Python functions over the decoded text; nothing in torch or transformers is
mocked.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlaif.optimizers.base import Budget, NonFiniteLossError, TrainContext
from rlaif.optimizers.ppo import CHECKPOINT_PREFIX, METRICS, PPOOptimizer
from rlaif.types import Prompt

TEXTS = ["the film is wonderful", "a dull, boring movie", "a great night at the cinema", "which response is better?",
         "the cast and the score", "weak writing and awful pacing"]
B = 4  # rollout batch in every test


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model runs far faster on one thread, above all while other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def prompts() -> list[Prompt]:
    return [Prompt(id=f"p{i}", text=t, messages=[{"role": "user", "content": f"Continue: {t}"}], split="train")
            for i, t in enumerate(TEXTS)]


def vowel_reward(ps: list[Prompt], completions: list[str]) -> list[float]:
    """Share of vowels in the completion: a smooth target the random model can drift towards."""
    return [sum(ch in "aeiou" for ch in c) / (1 + len(c)) for c in completions]


def ppo(**kw) -> PPOOptimizer:
    base = dict(learning_rate=1e-3, rollout_batch_size=B, total_episodes=2 * B, ppo_epochs=2, num_minibatches=2,
                value_model="shared", progress_bar=False)
    return PPOOptimizer(**{**base, **kw})


def context(tiny_model: str, folder: Path, reward=vowel_reward, budget: Budget | None = None,
            checkpoints: bool = True) -> TrainContext:
    return TrainContext(policy_path=tiny_model, output_dir=folder / "policy", seed=0, prompts=prompts(),
                        reward=reward, checkpoint_dir=folder / "ckpt" if checkpoints else None, max_new_tokens=6,
                        budget=budget or Budget())


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"))


def checkpoints(ctx: TrainContext) -> list[Path]:
    return sorted(Path(ctx.checkpoint_dir).glob(f"{CHECKPOINT_PREFIX}*"))


@pytest.mark.parametrize(("value_model", "lora"), [("separate", False), ("shared", False), ("shared", True),
                                                   ("separate", True)],
                         ids=["separate", "shared", "lora-shared", "lora-separate"])
def test_ppo_trains_logs_and_saves_a_plain_model(tiny_model, tmp_path, value_model, lora):
    from transformers import AutoModelForCausalLM

    ctx = context(tiny_model, tmp_path)
    opt = ppo(value_model=value_model, lora={"enabled": lora, "r": 4, "alpha": 8, "target_modules": "all-linear"},
              total_episodes=3 * B)
    assert (opt.name, opt.needs_pairs, opt.needs_reward) == ("ppo", False, True)
    final = opt.train(ctx)

    out = ctx.output_dir
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert not (out / "adapter_config.json").exists()  # LoRA merged: one plain model
    model = AutoModelForCausalLM.from_pretrained(out)  # loads as a plain causal LM
    assert not any("lora" in n for n, _ in model.named_parameters())
    start, trained = weights(tiny_model), weights(out)
    assert start.keys() == trained.keys()
    assert any(not torch.equal(start[k], trained[k]) for k in start), "PPO did not change the policy"

    assert [r["train/iteration"] for r in ctx.history] == [1.0, 2.0, 3.0]
    for row in ctx.history:
        assert set(METRICS) <= set(row), set(METRICS) - set(row)
        for key in ("train/policy_loss", "train/value_loss", "train/kl", "train/entropy", "train/reward"):
            assert math.isfinite(row[key]), key
    assert ctx.history[0]["train/kl"] == pytest.approx(0.0, abs=1e-4)  # first batch: policy == reference
    assert final["train/iterations"] == 3 and final["train/episodes"] == 3 * B
    assert final["train/kl_coef"] == 0.05
    sampled = sum(r["train/response_length"] * B for r in ctx.history)
    assert ctx.counters["generated_tokens"] == pytest.approx(sampled)
    assert [p.name for p in checkpoints(ctx)] == [f"{CHECKPOINT_PREFIX}000003"]  # saved at the end


def test_budget_sets_the_number_of_iterations(tiny_model, tmp_path):
    calls: list[int] = []

    def counted(ps, cs):
        calls.append(len(cs))
        return vowel_reward(ps, cs)

    ctx = context(tiny_model, tmp_path / "judge", counted, Budget(judge_calls=2 * B + 1))
    final = ppo(total_episodes=100 * B).train(ctx)  # the budget, not total_episodes, decides
    assert final["train/iterations"] == 2 and sum(calls) == 2 * B

    # 6 new tokens at most per response: one iteration costs up to 24 tokens, so 40 pays for one only
    ctx = context(tiny_model, tmp_path / "tokens", budget=Budget(generated_tokens=40))
    final = ppo(total_episodes=100 * B).train(ctx)
    assert final["train/iterations"] == 1 and 0 < ctx.counters["generated_tokens"] <= 40

    with pytest.raises(ValueError, match="rollout_batch_size"):
        ppo().train(context(tiny_model, tmp_path / "small", budget=Budget(judge_calls=B - 1)))


def test_unscorable_episodes_are_masked_and_counted(tiny_model, tmp_path):
    def half_unscorable(ps, cs):
        return [float("nan") if i % 2 == 0 else s for i, s in enumerate(vowel_reward(ps, cs))]

    ctx = context(tiny_model, tmp_path / "half", half_unscorable)
    ppo().train(ctx)
    for row in ctx.history:
        assert row["train/unscorable"] == B / 2 and row["train/masked_episodes"] == B / 2
        assert math.isfinite(row["train/policy_loss"]) and math.isfinite(row["train/reward"])
    assert any(not torch.equal(a, b) for a, b in zip(weights(tiny_model).values(), weights(ctx.output_dir).values(),
                                                       strict=True))

    # Nothing scorable: no update at all. Had NaN become a 0 label, the value and policy losses
    # would still have moved the weights.
    ctx = context(tiny_model, tmp_path / "none", lambda ps, cs: [float("nan")] * len(cs))
    ppo().train(ctx)
    assert [r["train/unscorable"] for r in ctx.history] == [B, B]
    start, trained = weights(tiny_model), weights(ctx.output_dir)
    assert all(torch.equal(start[k], trained[k]) for k in start)


def test_missing_eos_penalty_replaces_the_score(tiny_model, tmp_path):
    ctx = context(tiny_model, tmp_path, lambda ps, cs: [float("nan")] * len(cs))
    ppo(total_episodes=B, missing_eos_penalty=-1.0).train(ctx)
    row = ctx.history[0]
    # the random tiny model rarely emits EOS within 6 tokens: those responses get the penalty as
    # their score and train although the judge scored none; only the finished ones stay masked
    assert row["train/unscorable"] == B and row["train/no_eos_rate"] > 0
    assert row["train/masked_episodes"] == round(B * (1 - row["train/no_eos_rate"]))
    assert row["train/score_with_penalty"] == -1.0


def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(tiny_model, tmp_path):
    calls = {"n": 0}

    def breaks_on_second_batch(ps, cs):
        calls["n"] += 1
        return [math.inf] * len(cs) if calls["n"] == 2 else vowel_reward(ps, cs)

    ctx = context(tiny_model, tmp_path, breaks_on_second_batch)
    with pytest.raises(NonFiniteLossError, match="loss became nan in PPO iteration 2.*ppo-iter-000001"):
        ppo(save_every=1, total_episodes=3 * B).train(ctx)
    assert not (ctx.output_dir / "model.safetensors").exists()
    (ckpt,) = checkpoints(ctx)  # iteration 1's, untouched; no half-written folder beside it
    assert [p.name for p in Path(ctx.checkpoint_dir).iterdir()] == [ckpt.name]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["iteration"] == 1 and len(state["history"]) == 1
    assert load_file(str(ckpt / "policy.safetensors")) and load_file(str(ckpt / "value.safetensors"))
    assert torch.load(ckpt / "optimizer.pt", weights_only=True)["state"]

    # An absurd learning rate on the rerun (it resumes from iteration 1, with the new rate) blows
    # the weights up within iteration 2: the same error, and the checkpoint is still iteration 1's.
    ctx = context(tiny_model, tmp_path)
    with pytest.raises(NonFiniteLossError, match="iteration 2"):
        ppo(save_every=1, total_episodes=3 * B, learning_rate=1e3, max_grad_norm=None, reward_norm="none").train(ctx)
    assert [p.name for p in checkpoints(ctx)] == [ckpt.name]
    assert json.loads((ckpt / "state.json").read_text())["iteration"] == 1


def test_resume_continues_and_matches_an_uninterrupted_run(tiny_model, tmp_path):
    settings = dict(save_every=1, total_episodes=3 * B, target_kl=0.01, kl_horizon=100, value_model="separate")

    full = context(tiny_model, tmp_path / "full")
    ppo(**settings).train(full)
    assert [p.name for p in checkpoints(full)] == [f"{CHECKPOINT_PREFIX}000002", f"{CHECKPOINT_PREFIX}000003"]

    # a shorter run, then a new call asking for more episodes: it continues at iteration 3
    extended = context(tiny_model, tmp_path / "extended")
    ppo(**{**settings, "total_episodes": 2 * B}).train(extended)
    extended = context(tiny_model, tmp_path / "extended")
    final = ppo(**settings).train(extended)
    assert [r["train/iteration"] for r in extended.history] == [1.0, 2.0, 3.0]  # history kept
    assert final["train/iterations"] == 3

    # a run killed during iteration 2, resumed by a fresh call
    calls = {"n": 0}

    class Killed(Exception):
        pass

    def dies_in_iteration_two(ps, cs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed
        return vowel_reward(ps, cs)

    killed = context(tiny_model, tmp_path / "killed", dies_in_iteration_two)
    with pytest.raises(Killed):
        ppo(**settings).train(killed)
    resumed = context(tiny_model, tmp_path / "killed")
    ppo(**settings).train(resumed)
    assert [r["train/iteration"] for r in resumed.history] == [1.0, 2.0, 3.0]

    # CPU kernels are deterministic for a fixed thread count, and every iteration re-seeds from
    # (seed, iteration), so the resumed runs repeat the uninterrupted one exactly.
    reference = weights(full.output_dir)
    for run in (extended, resumed):
        got = weights(run.output_dir)
        for k in reference:
            torch.testing.assert_close(got[k], reference[k], rtol=0, atol=1e-6)
        for a, b in zip(full.history, run.history, strict=True):
            assert a["train/kl_coef"] == b["train/kl_coef"]
            assert a["train/reward"] == pytest.approx(b["train/reward"], abs=1e-9)


def test_mixed_precision_bf16_runs(tiny_model, tmp_path):
    ctx = context(tiny_model, tmp_path, checkpoints=False)
    final = ppo(total_episodes=B, mixed_precision="bf16", value_model="separate").train(ctx)
    assert math.isfinite(final["train/policy_loss"]) and math.isfinite(final["train/value_loss"])
    assert (ctx.output_dir / "model.safetensors").exists()


def test_bad_settings_fail_at_construction():
    for bad, match in ((dict(value_model="twin"), "value_model"), (dict(reward_norm="batch"), "reward_norm"),
                       (dict(rollout_batch_size=6, num_minibatches=4), "minibatches"),
                       (dict(target_kl=0), "target_kl"), (dict(mixed_precision="fp16"), "mixed_precision")):
        with pytest.raises(ValueError, match=match):
            PPOOptimizer(**bad)


def test_config_file_matches_the_constructor():
    """conf/optimizer/ppo.yaml names only real arguments, and its values are the code's defaults."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf/optimizer/ppo.yaml"))
    assert cfg.pop("_target_") == "rlaif.optimizers.PPOOptimizer" and cfg.pop("name") == "ppo"
    for pipeline_key in ("reward_source", "reward_reference"):  # read by the pipeline, not by PPO
        cfg.pop(pipeline_key)
    params = inspect.signature(PPOOptimizer).parameters
    assert set(cfg) <= set(params), set(cfg) - set(params)
    assert {k: v for k, v in cfg.items() if k != "lora"} == {k: params[k].default for k in cfg if k != "lora"}
    PPOOptimizer(**cfg)  # validates
