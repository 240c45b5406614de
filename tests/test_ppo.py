"""PPO end to end on the tiny model: it trains, logs, respects budgets, masks unscorable episodes,
stops on non-finite losses without harming the last checkpoint, and resumes exactly.

The rewards are real Python functions over the decoded text; nothing in torch or transformers is
mocked.
"""

from __future__ import annotations

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


def constant(value: float):
    def reward(ps, cs):
        return [value] * len(cs)
    return reward


def test_missing_eos_penalty_is_subtracted_from_the_score(tiny_model, tmp_path):
    """As in TRL: a response without EOS keeps its score minus the penalty."""
    ctx = context(tiny_model, tmp_path / "scored", constant(0.5), checkpoints=False)
    ppo(total_episodes=2 * B, missing_eos_penalty=2.0, reward_norm="none").train(ctx)
    rates = [row["train/no_eos_rate"] for row in ctx.history]
    assert any(r > 0 for r in rates)  # the random tiny model rarely ends within 6 tokens
    for row, rate in zip(ctx.history, rates, strict=True):
        assert row["train/masked_episodes"] == 0
        assert row["train/score_with_penalty"] == pytest.approx(0.5 - 2.0 * rate, abs=1e-6)

    # A penalty adjusts a score; it is not one: unscorable responses stay out of the loss.
    ctx = context(tiny_model, tmp_path / "unscorable", constant(float("nan")), checkpoints=False)
    ppo(total_episodes=B, missing_eos_penalty=2.0).train(ctx)
    assert ctx.history[0]["train/masked_episodes"] == B
    start, trained = weights(tiny_model), weights(ctx.output_dir)
    assert all(torch.equal(start[k], trained[k]) for k in start)

    with pytest.raises(ValueError, match="missing_eos_penalty: .*subtracted from the score.*got -1.0"):
        PPOOptimizer(missing_eos_penalty=-1.0)


def test_value_head_starts_at_zero(tiny_model, tmp_path):
    from rlaif.optimizers.ppo import value_head

    head = value_head(32)
    assert head.weight.abs().sum() == 0 and head.bias.abs().sum() == 0
    assert torch.equal(head(torch.randn(3, 5, 32)), torch.zeros(3, 5, 1))
    # In the loop: the first rollout's values are all 0, so they explain none of the returns' variance
    # (a randomly initialised head gives V != 0 and an explained variance away from 0).
    for value_model in ("shared", "separate"):
        ctx = context(tiny_model, tmp_path / value_model, checkpoints=False)
        ppo(total_episodes=B, value_model=value_model, mixed_precision="no").train(ctx)
        assert ctx.history[0]["train/explained_variance"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("target_kl", "direction"), [(1e-9, 1), (1e3, -1)], ids=["kl-above", "kl-below"])
def test_adaptive_kl_coefficient_follows_the_batch_kl(tiny_model, tmp_path, target_kl, direction):
    """Inside the training loop each iteration's KL moves the next iteration's coefficient: up while
    the KL is above the target, down while it is below."""
    ctx = context(tiny_model, tmp_path, checkpoints=False)
    ppo(total_episodes=4 * B, target_kl=target_kl, kl_horizon=8, learning_rate=3e-3, mixed_precision="no").train(ctx)
    coefs = [row["train/kl_coef"] for row in ctx.history]
    kls = [row["train/kl"] for row in ctx.history]
    assert coefs[0] == 0.05  # the first iteration uses the configured coefficient
    moved = 0
    for kl, before, after in zip(kls[:-1], coefs[:-1], coefs[1:], strict=True):
        if kl == pytest.approx(target_kl, abs=1e-12):
            continue
        assert math.copysign(1, after - before) == math.copysign(1, kl - target_kl), (kls, coefs)
        moved += math.copysign(1, after - before) == direction
    assert moved >= 1, (kls, coefs)  # the estimator can dip below 0 on a batch; 1e-9 is passed soon


def adam_steps(ctx: TrainContext) -> int:
    """Optimizer steps taken, as Adam counted them (read from the final checkpoint)."""
    (ckpt,) = checkpoints(ctx)
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)["state"]
    return {int(v["step"]) for v in state.values()}.pop()


def test_minibatches_and_gradient_accumulation_set_the_optimizer_steps(tiny_model, tmp_path):
    # 2 iterations x 2 epochs x (4 episodes / mini_batch_size 2) = 8 steps; grad_accum splits each
    # minibatch into micro-batches without adding steps. mini_batch_size overrides num_minibatches.
    ctx = context(tiny_model, tmp_path / "accum")
    ppo(mini_batch_size=2, num_minibatches=1, grad_accum=2, mixed_precision="no").train(ctx)
    assert adam_steps(ctx) == 2 * 2 * 2
    ctx = context(tiny_model, tmp_path / "one")
    ppo(mini_batch_size=4, num_minibatches=2, grad_accum=4, mixed_precision="no").train(ctx)
    assert adam_steps(ctx) == 2 * 2 * 1
    ctx = context(tiny_model, tmp_path / "plain")
    ppo(num_minibatches=4, mixed_precision="no").train(ctx)
    assert adam_steps(ctx) == 2 * 2 * 4


def test_whiten_advantages_false_keeps_the_raw_advantages(tiny_model, tmp_path):
    # A constant score of 5 and V = 0 at the start: every first-iteration advantage is
    # 5 * (gamma * lam)^k for k < 6 tokens (the KL penalty is 0 while policy == reference).
    ctx = context(tiny_model, tmp_path / "raw", constant(5.0), checkpoints=False)
    ppo(total_episodes=B, whiten_advantages=False, reward_norm="none", mixed_precision="no").train(ctx)
    row = ctx.history[0]
    assert 5 * 0.95**5 - 1e-3 <= row["train/advantage_mean"] <= 5 + 1e-3
    ctx = context(tiny_model, tmp_path / "whitened", constant(5.0), checkpoints=False)
    ppo(total_episodes=B, whiten_advantages=True, reward_norm="none", mixed_precision="no").train(ctx)
    row = ctx.history[0]
    assert row["train/advantage_mean"] == pytest.approx(0.0, abs=1e-5)
    assert row["train/advantage_std"] == pytest.approx(1.0, abs=1e-3)


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
        ppo(save_every=1, total_episodes=3 * B, learning_rate=1e30, max_grad_norm=None, reward_norm="none").train(ctx)
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
                       (dict(target_kl=0), "target_kl"), (dict(mixed_precision="fp8"), "mixed_precision"),
                       (dict(missing_eos_penalty=-1.0), "missing_eos_penalty")):
        with pytest.raises(ValueError, match=match):
            PPOOptimizer(**bad)


def test_config_file_is_the_one_source_of_defaults():
    """conf/optimizer/ppo.yaml holds every option and its default; the code declares types only."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf/optimizer/ppo.yaml"))
    assert cfg.pop("_target_") == "rlaif.optimizers.PPOOptimizer" and cfg.pop("name") == "ppo"
    assert PPOOptimizer().options.model_dump() == cfg
    assert all(f.is_required() for f in PPOOptimizer.Options.model_fields.values())
    assert PPOOptimizer(gamma=0.5).options.gamma == 0.5


def test_progress_shows_a_bar_and_one_line_per_logging_step(tiny_model, tmp_path, capsys):
    import re

    ctx = context(tiny_model, tmp_path)
    ppo(total_episodes=3 * B, logging_steps=1, mixed_precision="no", progress_bar=True).train(ctx)
    err = capsys.readouterr().err
    lines = re.findall(r"(?:^|[\r\n])step (\d+)/(\d+)  reward \S+  kl \S+  kl coef \S+  pg loss \S+", err)
    assert [(int(a), int(b)) for a, b in lines] == [(1, 3), (2, 3), (3, 3)], err[-2000:]
    assert re.search(r"train ppo: [^\r\n]*3/3 ", err)


@pytest.mark.parametrize("value_model", ["separate", "shared"])
def test_policy_folder_is_loaded_once(tiny_model, tmp_path, value_model):
    """The reference and a separate value trunk are copies of the loaded policy, not loads of their
    own (and they start from its weights: the first batch's KL is zero)."""
    from rlaif import models

    ctx = context(tiny_model, tmp_path, checkpoints=False)
    before = len(models.LOADS)
    ppo(value_model=value_model, total_episodes=B).train(ctx)
    loaded = [path for path, _ in models.LOADS[before:]]
    assert loaded.count(tiny_model) == 1, loaded
    assert ctx.history[0]["train/kl"] == pytest.approx(0.0, abs=1e-4)
