"""GRPO, RLOO and online DPO train the tiny model against a real reward function through TRL.

The reward is a plain Python function of the text (the share of the letter "e"), standing in for a
judge; some tests make it unscorable (NaN) for one response per group, as a judge can be.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rlaif.config import conf_dir
from rlaif.optimizers.base import Budget, TrainContext
from rlaif.optimizers.dpo import DPOOptimizer
from rlaif.optimizers.online_dpo import OnlineDPOOptimizer
from rlaif.optimizers.trl_online import GRPOOptimizer, RLOOOptimizer, budget_max_steps, completion_lengths
from rlaif.types import PreferencePair, Prompt

MAX_NEW = 8


def letter_share(prompts: list[Prompt], completions: list[str]) -> list[float]:
    """Reward: the fraction of the response's characters that are "e" (0 for an empty response)."""
    assert all(isinstance(c, str) for c in completions)
    assert all(isinstance(p, Prompt) and p.id.startswith("p") for p in prompts), "prompts map back to ctx.prompts"
    return [c.count("e") / len(c) if c else 0.0 for c in completions]


class SometimesUnscorable:
    """``letter_share``, but NaN for the first response of every group of ``every`` (an unscorable item)."""

    def __init__(self, every: int):
        self.every, self.nans = every, 0

    def __call__(self, prompts, completions):
        out = letter_share(prompts, completions)
        for i in range(0, len(out), self.every):
            out[i] = float("nan")
            self.nans += 1
        return out


def make_prompts(n: int = 4) -> list[Prompt]:
    return [Prompt(id=f"p{i}", text=f"opening {i}", split="train",
                   messages=[{"role": "user", "content": f"Continue this movie review: the film {i} was"}])
            for i in range(n)]


def weights(path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def check_saved_policy(out_dir: Path, start: dict[str, torch.Tensor]) -> None:
    from transformers import AutoTokenizer

    assert (out_dir / "model.safetensors").exists() and (out_dir / "config.json").exists()
    assert not (out_dir / "adapter_config.json").exists(), "LoRA must be merged into a plain model"
    assert not (out_dir / "trainer").exists()
    after = weights(out_dir)
    assert after.keys() == start.keys()
    assert any(not torch.equal(after[k], start[k]) for k in start), "training changed no parameter"
    assert AutoTokenizer.from_pretrained(out_dir).chat_template


def ctx_for(tiny_model, tmp_path, reward, budget: Budget | None = None, name="out") -> TrainContext:
    return TrainContext(policy_path=tiny_model, output_dir=tmp_path / name, seed=0, prompts=make_prompts(),
                        reward=reward, max_new_tokens=MAX_NEW, temperature=1.0, budget=budget or Budget())


def loss_rows(ctx: TrainContext) -> list[dict]:
    return [r for r in ctx.history if "train/loss" in r]


# -- GRPO / RLOO ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [GRPOOptimizer, RLOOOptimizer])
def test_group_optimizer_trains_within_a_judge_call_budget(cls, tiny_model, tmp_path):
    # 8 responses per step (2 prompts x 4), a budget of 16 judge calls -> exactly 2 optimizer steps
    reward = SometimesUnscorable(every=4)  # one unscorable response in every group of 4
    ctx = ctx_for(tiny_model, tmp_path, reward, Budget(judge_calls=16))
    start = weights(tiny_model)
    out = cls(learning_rate=1e-2, num_generations=4, batch_size=8, max_steps=50).train(ctx)

    assert out["train/global_step"] == 2
    assert ctx.counters["judge_calls"] == 16 and out["train/completions_scored"] == 16
    assert out["train/unscorable"] == reward.nans == 4
    assert 16 <= ctx.counters["generated_tokens"] <= 16 * MAX_NEW
    rows = loss_rows(ctx)
    assert [r["train/step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train/loss"]) for r in rows)
    assert any(r["train/grad_norm"] > 0 for r in rows), "NaN rewards must not wipe out the learning signal"
    assert any(k.startswith("train/reward") for k in rows[0])
    check_saved_policy(ctx.output_dir, start)


def test_grpo_with_lora_saves_a_merged_plain_model(tiny_model, tmp_path):
    ctx = ctx_for(tiny_model, tmp_path, letter_share, Budget(judge_calls=8))
    start = weights(tiny_model)
    out = GRPOOptimizer(learning_rate=5e-2, num_generations=4, batch_size=8, beta=0.04,
                        lora={"enabled": True, "r": 4, "alpha": 8, "target_modules": "all-linear"}).train(ctx)
    assert out["train/global_step"] == 1
    check_saved_policy(ctx.output_dir, start)


def test_group_optimizer_rejects_batches_of_partial_groups():
    with pytest.raises(ValueError, match="multiple of num_generations"):
        GRPOOptimizer(num_generations=4, batch_size=6)
    with pytest.raises(ValueError, match="at least 2"):
        RLOOOptimizer(num_generations=1, batch_size=4)


def test_group_optimizer_needs_enough_prompts_for_a_generation_batch(tiny_model, tmp_path):
    ctx = ctx_for(tiny_model, tmp_path, letter_share)
    with pytest.raises(ValueError, match="prompts per generation batch"):
        GRPOOptimizer(num_generations=2, batch_size=16).train(ctx)  # 8 prompts per batch, 4 given


# -- online DPO -------------------------------------------------------------------------------------
def test_online_dpo_trains_within_a_judge_call_budget(tiny_model, tmp_path):
    # 2 prompts x 2 responses = 4 judge calls per step; 8 calls -> 2 steps
    reward = SometimesUnscorable(every=4)
    ctx = ctx_for(tiny_model, tmp_path, reward, Budget(judge_calls=8))
    start = weights(tiny_model)
    out = OnlineDPOOptimizer(learning_rate=1e-2, batch_size=2, beta=0.1).train(ctx)

    assert out["train/global_step"] == 2
    assert ctx.counters["judge_calls"] == 8
    assert out["train/unscorable_pairs"] == 2  # one pair per step held an unscorable response
    rows = loss_rows(ctx)
    assert [r["train/step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train/loss"]) for r in rows)
    assert "train/objective/scores_margin" in rows[0] and "train/rewards/margins" in rows[0]
    check_saved_policy(ctx.output_dir, start)


class NeverScorable:
    """A judge that never gives a usable verdict."""

    def __call__(self, prompts, completions):
        return [float("nan")] * len(completions)


def test_online_dpo_does_not_train_on_unscorable_pairs(tiny_model, tmp_path):
    """With no usable verdict, no pair has a winner: the policy must not move (TRL alone would pick
    winners from rewards summed with nansum and train on them)."""
    ctx = ctx_for(tiny_model, tmp_path, NeverScorable(), Budget(judge_calls=8))
    start = weights(tiny_model)
    out = OnlineDPOOptimizer(learning_rate=1e-2, batch_size=2, beta=0.1).train(ctx)
    assert out["train/global_step"] == 2 and out["train/unscorable_pairs"] == 4
    after = weights(ctx.output_dir)
    assert all(torch.equal(start[k], after[k]) for k in start)


def test_pair_gate_gives_the_gradient_of_the_mean_over_scorable_pairs():
    from rlaif.optimizers.online_dpo import _GateState, _PairGate

    torch.manual_seed(0)
    base = torch.randn(6, 5)  # 3 pairs: rows 0-2 first responses, rows 3-5 second responses

    def pair_losses(lp):
        return torch.nn.functional.logsigmoid(lp[:3].sum(1) - lp[3:].sum(1)).neg()

    x = base.clone().requires_grad_(True)
    state = _GateState()
    y = _PairGate.apply(x, state)
    state.keep = torch.tensor([True, False, True])  # known only after the forward pass
    pair_losses(y).mean().backward()

    ref = base.clone().requires_grad_(True)
    pair_losses(ref)[[0, 2]].mean().backward()
    assert torch.allclose(x.grad, ref.grad)
    assert x.grad[[1, 4]].abs().sum() == 0 and x.grad[[0, 2, 3, 5]].abs().sum() > 0


def test_online_dpo_rejects_unknown_loss():
    with pytest.raises(ValueError, match="optimizer.loss_type: 'hinge' is not one of 'sigmoid' or 'ipo'"):
        OnlineDPOOptimizer(loss_type="hinge")


def test_online_optimizers_need_a_reward(tiny_model, tmp_path):
    ctx = ctx_for(tiny_model, tmp_path, None)
    with pytest.raises(ValueError, match="pointwise reward"):
        OnlineDPOOptimizer(batch_size=2).train(ctx)


# -- offline DPO: LoRA, IPO, cDPO, warmup ------------------------------------------------------------
def dpo_pairs(n: int = 8) -> list[PreferencePair]:
    def msg(role, text):
        return [{"role": role, "content": text}]

    return [PreferencePair(prompt=msg("user", f"Review {i}: the film"), chosen=msg("assistant", "wonderful and moving"),
                           rejected=msg("assistant", "dull, boring, awful"), prompt_id=f"p{i}", chosen_index=0,
                           rejected_index=1, chosen_score=1.0, rejected_score=0.0, margin=1.0, judge="j",
                           criterion="c") for i in range(n)]


def train_dpo_rows(tiny_model, folder: Path, **kw) -> list[dict]:
    """A real DPO run on 8 pairs (batch 2: 4 optimizer steps); its logged rows, one per step."""
    ctx = TrainContext(policy_path=tiny_model, output_dir=folder, seed=0, prompts=[], pairs=dpo_pairs())
    settings = dict(learning_rate=1e-3, batch_size=2, epochs=1, max_length=64, mixed_precision="no", beta=0.1)
    DPOOptimizer(**{**settings, **kw}).train(ctx)
    return loss_rows(ctx)


def test_dpo_with_lora_trains_low_rank_updates_and_saves_a_plain_model(tiny_model, tmp_path):
    start = weights(tiny_model)
    rows = train_dpo_rows(tiny_model, tmp_path / "lora", lora={"enabled": True, "r": 2, "alpha": 4,
                                                                 "target_modules": "all-linear"})
    assert len(rows) == 4 and all(math.isfinite(r["train/loss"]) for r in rows)
    check_saved_policy(tmp_path / "lora", start)
    after = weights(tmp_path / "lora")
    changed = [k for k in start if start[k].dim() == 2 and not torch.equal(start[k], after[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed), changed  # the adapted linears only
    for k in changed:  # merged adapters: W + B A, a change of rank <= r
        assert torch.linalg.matrix_rank(after[k] - start[k], rtol=1e-4) <= 2, k


def test_dpo_ipo_loss_reaches_trl(tiny_model, tmp_path):
    # At step 1 the policy is the reference (log-ratio margin 0): IPO's loss is (0 - 1/(2 beta))^2,
    # the sigmoid loss -log(1/2).
    ipo = train_dpo_rows(tiny_model, tmp_path / "ipo", loss_type="ipo", beta=0.1)
    assert ipo[0]["train/loss"] == pytest.approx((1 / (2 * 0.1)) ** 2, rel=1e-4)
    assert all(math.isfinite(r["train/loss"]) for r in ipo) and ipo[-1]["train/loss"] < ipo[0]["train/loss"]
    sigmoid = train_dpo_rows(tiny_model, tmp_path / "sigmoid", loss_type="sigmoid")
    assert sigmoid[0]["train/loss"] == pytest.approx(math.log(2), rel=1e-4)


def test_dpo_label_smoothing_gives_conservative_dpo(tiny_model, tmp_path):
    # cDPO's gradient at margin 0 is (1 - 2 eps) times DPO's (robust DPO's is 1 / (1 - 2 eps) times):
    # the first step's gradient norm says which loss TRL computed.
    plain = train_dpo_rows(tiny_model, tmp_path / "plain")
    cdpo = train_dpo_rows(tiny_model, tmp_path / "cdpo", label_smoothing=0.25)
    assert cdpo[0]["train/loss"] == pytest.approx(math.log(2), rel=1e-4)
    assert cdpo[0]["train/grad_norm"] == pytest.approx(0.5 * plain[0]["train/grad_norm"], rel=1e-3)
    assert all(math.isfinite(r["train/loss"]) for r in cdpo)
    with pytest.raises(ValueError, match=r"optimizer.label_smoothing: 0.5 must be in \[0, 0.5\)"):
        DPOOptimizer(label_smoothing=0.5)


def test_warmup_ratio_is_a_share_of_the_training_steps(tiny_model, tmp_path):
    # 4 steps, warmup_ratio 0.5: the rate climbs over 2 steps, then decays linearly to 0.
    rows = train_dpo_rows(tiny_model, tmp_path / "warm", warmup_ratio=0.5, lr_scheduler="linear")
    lr = 1e-3
    assert [r["train/learning_rate"] for r in rows] == pytest.approx([0.0, lr / 2, lr, lr / 2])
    # 1 or more would be read as a number of steps: refused everywhere the key exists
    for make in (lambda: DPOOptimizer(warmup_ratio=1.0), lambda: GRPOOptimizer(warmup_ratio=1.0),
                 lambda: OnlineDPOOptimizer(warmup_ratio=2), lambda: RLOOOptimizer(warmup_ratio=-0.1)):
        with pytest.raises(ValueError, match=r"optimizer.warmup_ratio: .* must be in \[0, 1\)"):
            make()


# -- budgets and counting ---------------------------------------------------------------------------
def test_budget_to_steps():
    def ctx(**b):
        return TrainContext(policy_path="", output_dir=Path(), seed=0, prompts=[], budget=Budget(**b))

    assert budget_max_steps(ctx(), 8, 1, 1, 32, "x") is None
    assert budget_max_steps(ctx(judge_calls=17), 8, 1, 1, 32, "x") == 2
    # one generation batch feeds 2 micro-steps per optimizer step x 3 passes (num_iterations)
    assert budget_max_steps(ctx(judge_calls=16), 8, 2 * 3, 2, 32, "x") == 6
    # online DPO: one generation per micro-step, 2 micro-steps per optimizer step
    assert budget_max_steps(ctx(judge_calls=16), 4, 1, 2, 32, "x") == 2
    assert budget_max_steps(ctx(generated_tokens=8 * 32 * 3), 8, 1, 1, 32, "x") == 3
    with pytest.raises(ValueError, match="budget.judge_calls=7 does not cover one"):
        budget_max_steps(ctx(judge_calls=7), 8, 1, 1, 32, "x")


def test_completion_lengths_stop_at_the_first_eos():
    assert completion_lengths([[5, 6, 2, 0, 0], [5, 6, 7], [2]], {2}) == [3, 3, 1]
    assert completion_lengths(torch.tensor([[5, 2, 2]]), {2}) == [2]


# -- configs ----------------------------------------------------------------------------------------
PIPELINE_KEYS = {"_target_", "name", "reward_source", "reward_reference"}  # read by the pipeline, not the optimizer

# our key -> the field of TRL's config (the trainer's ``args``) it must arrive in
TRL_FIELDS = {
    "learning_rate": "learning_rate", "batch_size": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps", "epochs": "num_train_epochs", "max_steps": "max_steps",
    "beta": "beta", "temperature": "temperature", "lr_scheduler": "lr_scheduler_type", "warmup_ratio": "warmup_steps",
    "max_grad_norm": "max_grad_norm", "gradient_checkpointing": "gradient_checkpointing",
    "logging_steps": "logging_steps", "loss_type": "loss_type",
    # GRPO / RLOO
    "num_generations": "num_generations", "epsilon": "epsilon", "num_iterations": "num_iterations",
    "max_new_tokens": "max_completion_length", "mask_truncated_completions": "mask_truncated_completions",
    "scale_rewards": "scale_rewards", "normalize_advantages": "normalize_advantages",
    # online DPO
    "max_length": "max_length", "missing_eos_penalty": "missing_eos_penalty",
}
OWN_FIELDS = {"online_dpo": {"max_new_tokens": "max_new_tokens"}}  # where a trainer names a field its own way
# Values unlike both our defaults and TRL's, so a key that never reached TRL shows. Small enough
# for one optimizer step on the tiny model.
GROUP = dict(learning_rate=3e-3, num_generations=2, batch_size=4, grad_accum=2, epochs=3, max_steps=1, beta=0.07,
             epsilon=0.3, num_iterations=2, temperature=0.9, max_new_tokens=5, lr_scheduler="cosine",
             warmup_ratio=0.25, max_grad_norm=0.7, mask_truncated_completions=True, gradient_checkpointing=True,
             logging_steps=2, mixed_precision="no", save_steps=4)
TEST_VALUES = {
    "grpo": {**GROUP, "loss_type": "bnpo", "scale_rewards": "batch"},
    "rloo": {**GROUP, "normalize_advantages": True, "lora": {"enabled": True, "r": 2, "alpha": 4,
                                                               "target_modules": "all-linear"}},
    "online_dpo": dict(learning_rate=3e-3, batch_size=2, grad_accum=2, epochs=3, max_steps=1, beta=0.07,
                       loss_type="ipo", max_new_tokens=5, max_length=100, temperature=0.9, missing_eos_penalty=0.5,
                       lr_scheduler="cosine", warmup_ratio=0.25, max_grad_norm=0.7, gradient_checkpointing=True,
                       logging_steps=2, mixed_precision="no", save_steps=4),
}


@pytest.fixture
def started_trainers(monkeypatch) -> list:
    """Every transformers/TRL trainer whose ``train()`` runs in the test (counted, then run as is)."""
    from transformers import Trainer

    seen: list = []
    train = Trainer.train

    def counted(self, *args, **kwargs):
        seen.append(self)
        return train(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train", counted)
    return seen


def plain(value):
    value = getattr(value, "value", value)  # enums (lr_scheduler_type) by their name
    return value[0] if isinstance(value, list) and len(value) == 1 else value  # online DPO's beta list


@pytest.mark.parametrize(("option", "cls"), [("grpo", GRPOOptimizer), ("rloo", RLOOOptimizer),
                                             ("online_dpo", OnlineDPOOptimizer)])
def test_config_keys_reach_the_trl_trainer(option, cls, tiny_model, tmp_path, started_trainers):
    cfg = OmegaConf.to_container(OmegaConf.load(conf_dir() / "optimizer" / f"{option}.yaml"))
    assert cfg["_target_"] == f"rlaif.optimizers.{cls.__name__}" and cfg["name"] == cls.name == option
    handled = set(TRL_FIELDS) | PIPELINE_KEYS | {"dtype", "mixed_precision", "lora", "save_steps", "vllm"}
    assert set(cfg) <= handled, f"no check says where optimizer.{set(cfg) - handled} goes"
    values = {**cfg, **TEST_VALUES[option]}
    ctx = TrainContext(policy_path=tiny_model, output_dir=tmp_path / "out", seed=0, prompts=make_prompts(),
                       reward=letter_share, max_new_tokens=MAX_NEW, temperature=1.0, checkpoint_dir=tmp_path / "ckpt")
    cls(**{k: v for k, v in values.items() if k != "_target_"}).train(ctx)

    (trainer,) = started_trainers
    args, fields = trainer.args, {**TRL_FIELDS, **OWN_FIELDS.get(option, {})}
    for key in set(cfg) & set(fields):
        got = plain(getattr(args, fields[key]))
        assert got == pytest.approx(values[key]) if isinstance(got, float) else got == values[key], \
            f"optimizer.{key}={values[key]!r} reached TRL as {fields[key]}={got!r}"
    assert not args.bf16 and not args.fp16  # mixed_precision: "no"
    assert args.use_vllm is values["vllm"]["enabled"] is False  # enabled: tests/test_vllm_config.py
    assert args.save_steps == 4 and plain(args.save_strategy) == "steps"
    assert hasattr(trainer.model, "peft_config") == bool(values.get("lora", {}).get("enabled"))
    assert next(trainer.model.parameters()).dtype == torch.float32  # dtype: auto trains float32 weights
    assert trainer.state.global_step == 1


def test_dpo_reference_pass_runs_once_over_the_pairs(tiny_model, tmp_path):
    """With the YAML's default (``precompute_ref_log_probs: true``) the reference log-probs are
    computed in one pass before training, not again in every epoch and step: the gradient-free
    forwards of the model number the reference batches, whatever the number of epochs."""
    from transformers import GenerationMixin

    no_grad_forwards = []

    def count(module, args):
        if isinstance(module, GenerationMixin) and not torch.is_grad_enabled():  # the causal LM, not its parts
            no_grad_forwards.append(type(module).__name__)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
    try:
        rows = train_dpo_rows(tiny_model, tmp_path / "dpo", epochs=2)  # 8 pairs, batch 2: 4 steps per epoch
    finally:
        handle.remove()
    assert len(rows) == 8
    assert len(no_grad_forwards) == 8 // 2  # one reference batch per 2 pairs, once


def test_dpo_loads_the_policy_from_disk_once(tiny_model, tmp_path, monkeypatch):
    """Without precomputed reference log-probs the reference is an in-memory copy of the loaded policy,
    not a second load of its folder (TRL's default), and it starts equal to the policy: the
    log-ratio margin at step 1 is 0, so the first sigmoid loss is log 2."""
    from transformers import PreTrainedModel

    loads = []
    original = PreTrainedModel.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        loads.append(cls.__name__)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(counted))
    for precompute in (False, True):
        loads.clear()
        rows = train_dpo_rows(tiny_model, tmp_path / f"dpo{precompute}", precompute_ref_log_probs=precompute)
        assert len(rows) == 4 and len(loads) == 1, (precompute, loads)
        assert rows[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-4)


@pytest.mark.parametrize("given", [None, False, True])
def test_dpo_gradient_checkpointing_follows_the_config(given):
    """optimizer.gradient_checkpointing reaches TRL's DPOConfig (on by default, as TRL has it); before the
    key existed TRL's default could not be turned off."""
    from rlaif.optimizers.dpo import _dpo_config

    opt = DPOOptimizer(**({} if given is None else {"gradient_checkpointing": given}))
    args = _dpo_config(opt, {"output_dir": "unused", "save_strategy": "no"}, seed=0)
    assert args.gradient_checkpointing is (True if given is None else given)
