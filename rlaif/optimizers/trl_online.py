"""GRPO and RLOO: online policy-gradient training through TRL, with the judge as the reward.

Both sample ``num_generations`` responses per training prompt from the policy as it learns, score
them with ``ctx.reward`` (the run's judge) and push up the responses that beat their siblings:
GRPO (Shao et al. 2024) against the group mean, scaled by the group's std, with a KL penalty to the
reference in the loss; RLOO (Ahmadian et al. 2024) against the mean of the other responses, with a
sequence-level KL penalty folded into the reward. These classes only translate our config and
``TrainContext`` into TRL's arguments; they add no algorithm of their own.

The helpers below (log forwarding, counting reward, budget -> steps, checkpointing) are shared by
every TRL-based optimizer in this package. Checkpoints go to ``ctx.checkpoint_dir`` every
``optimizer.save_steps`` steps and a rerun resumes from the newest (rlaif/optimizers/checkpoints.py).
Unscorable responses (NaN rewards) are left to TRL, which drops them from the group baseline and
gives them zero advantage.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import model_validator

from rlaif import progress
from rlaif.optimizers.base import NonFiniteLossError, TrainContext, lora_config, save_policy, trl_reward
from rlaif.optimizers.options import OnlineOptions, take_options
from rlaif.options import Count, NonNegative, Positive

log = logging.getLogger(__name__)


# -- shared helpers --------------------------------------------------------------------------------
def log_forwarder(log_fn, last: dict[str, float], what: str, hint: str, prefix: str = "train/", step_offset: int = 0):
    """A TrainerCallback that forwards TRL's log rows to ``log_fn(row, step=...)`` (keys ``<prefix>...``)
    and raises NonFiniteLossError when the logged loss is NaN or infinite."""
    from transformers import TrainerCallback

    class _Forward(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            logs = dict(logs or {})
            for key in ("loss", "train_loss"):
                loss = logs.get(key)
                if isinstance(loss, (int, float)) and not math.isfinite(loss):
                    raise NonFiniteLossError(f"{what} loss became {loss} at step {state.global_step}; {hint}")
            row = {f"{prefix}{k}": float(v) for k, v in logs.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
            last.update(row)
            log_fn(row, step=step_offset + state.global_step)

    return _Forward()


def completion_lengths(completion_ids, eos_ids: set[int]) -> list[int]:
    """Sampled tokens per completion: up to and including the first EOS, else all of them.

    TRL passes unpadded ids (GRPO, RLOO) or ids padded only after the EOS (online DPO), so nothing
    after the first EOS was sampled.
    """
    out = []
    for ids in (completion_ids if completion_ids is not None else []):
        ids = list(ids.tolist() if hasattr(ids, "tolist") else ids)
        out.append(next((t + 1 for t, tid in enumerate(ids) if tid in eos_ids), len(ids)))
    return out


class CountingReward:
    """``ctx.reward`` in TRL's ``reward_funcs`` signature, counting generated tokens (and judge calls when
    the reward does not count them itself) into ``ctx.counters``."""

    def __init__(self, ctx: TrainContext, tokenizer, model=None):
        if ctx.reward is None:
            raise ValueError("this optimizer needs a pointwise reward (ctx.reward): the pipeline builds it from the "
                             "judge; give the run a judge")
        self.ctx = ctx
        self.inner = trl_reward(ctx.reward, ctx.prompts)
        self.__name__ = self.inner.__name__
        self.self_counting = isinstance(getattr(ctx.reward, "counters", None), dict)
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
        self.eos_ids = {e for e in eos if e is not None}
        self.completions = 0
        self.unscorable = 0

    def __call__(self, prompts, completions, completion_ids=None, **kw) -> list[float]:
        tokens = sum(completion_lengths(completion_ids, self.eos_ids))
        self.ctx.counters["generated_tokens"] = self.ctx.counters.get("generated_tokens", 0) + tokens
        out = [float("nan") if v is None else float(v) for v in self.inner(prompts, completions)]
        if len(out) != len(completions):
            raise ValueError(f"the reward returned {len(out)} scores for {len(completions)} completions")
        self.completions += len(out)
        self.unscorable += sum(not math.isfinite(v) for v in out)
        if not self.self_counting:
            self.ctx.counters["judge_calls"] = self.ctx.counters.get("judge_calls", 0) + len(out)
        return out


def budget_max_steps(ctx: TrainContext, per_generation: int, micro_steps_per_generation: int, grad_accum: int,
                     max_new_tokens: int, what: str) -> int | None:
    """Optimizer steps that fit ``ctx.budget`` (None when no budget is set).

    A trainer samples ``per_generation`` responses (all processes; each one is scored once by the judge)
    and trains ``micro_steps_per_generation`` micro-steps on them; an optimizer step is ``grad_accum``
    micro-steps. A token budget is charged ``max_new_tokens`` per response (the most one can cost).
    """
    limits = []
    if ctx.budget.judge_calls is not None:
        limits.append(("budget.judge_calls", ctx.budget.judge_calls, per_generation))
    if ctx.budget.generated_tokens is not None:
        limits.append(("budget.generated_tokens", ctx.budget.generated_tokens, per_generation * max_new_tokens))
    if not limits:
        return None
    generations = min(int(total // cost) for _, total, cost in limits)
    steps = generations * micro_steps_per_generation // grad_accum
    if steps < 1:
        name, total, cost = min(limits, key=lambda x: x[1] / x[2])
        raise ValueError(f"{name}={total} does not cover one {what} optimizer step ({cost} per generation batch, "
                         f"{micro_steps_per_generation} micro-steps per batch, grad_accum={grad_accum}): raise the "
                         "budget or lower optimizer.batch_size / grad_accum / num_generations")
    return steps


def common_args(opt, seed: int, output_dir: Path, max_steps: int | None = None,
                checkpoint_dir: Path | None = None) -> dict[str, Any]:
    """TrainingArguments shared by every TRL trainer we wrap (``opt`` holds our config keys).

    With ``checkpoint_dir`` and ``opt.save_steps``, checkpoints are saved there every ``save_steps``
    optimizer steps (see rlaif/optimizers/checkpoints.py); otherwise none are written.
    """
    from rlaif.optimizers.checkpoints import checkpoint_args

    saving = checkpoint_args(getattr(opt, "save_steps", None), Path(checkpoint_dir) if checkpoint_dir else None,
                             output_dir, opt.logging_steps)
    return dict(
        **saving, learning_rate=opt.learning_rate,
        num_train_epochs=opt.epochs, max_steps=max_steps if max_steps is not None else -1,
        per_device_train_batch_size=opt.batch_size, gradient_accumulation_steps=opt.grad_accum,
        warmup_steps=opt.warmup_ratio, lr_scheduler_type=opt.lr_scheduler,  # warmup: a share (< 1) of the steps
        max_grad_norm=opt.max_grad_norm,
        logging_steps=opt.logging_steps, report_to=[], seed=seed, data_seed=seed,
        logging_nan_inf_filter=False,  # log a NaN loss as NaN (the default averages it away, logging 0.0)
        bf16=opt.dtype == "bfloat16" or opt.mixed_precision == "bf16", fp16=opt.mixed_precision == "fp16",
        gradient_checkpointing=opt.gradient_checkpointing, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )


def resumer(args, ctx: TrainContext, last: dict[str, float], reward=None):
    """The checkpoint callback for a trainer that saves checkpoints (None when it does not)."""
    from rlaif.optimizers.checkpoints import TrainerResume

    saves = getattr(args.save_strategy, "value", args.save_strategy) not in ("no", None)
    return TrainerResume(ctx, last, reward) if saves else None


def train_resumable(trainer, resume, tokenizer, output_dir: Path, last: dict[str, float], ctx: TrainContext,
                    reward: CountingReward | None = None) -> dict[str, float]:
    """``trainer.train()``, from the newest checkpoint when there is one; then ``finish``."""
    if resume is not None:
        resume.attach(trainer)
    trainer.train(resume_from_checkpoint=resume.resume_from if resume is not None else None)
    return finish(trainer, tokenizer, output_dir, last, ctx, reward)


def finish(trainer, tokenizer, output_dir: Path, last: dict[str, float], ctx: TrainContext,
           reward: CountingReward | None = None) -> dict[str, float]:
    """Save the trained policy (LoRA merged), drop the trainer's scratch folder, return the final metrics."""
    output_dir.mkdir(parents=True, exist_ok=True)
    save_policy(trainer.model, tokenizer, output_dir)
    shutil.rmtree(output_dir / "trainer", ignore_errors=True)
    out = dict(last)
    out["train/global_step"] = float(trainer.state.global_step)
    out["train/generated_tokens"] = float(ctx.counters.get("generated_tokens", 0))
    if reward is not None:
        out["train/completions_scored"] = float(reward.completions)
        out["train/unscorable"] = float(reward.unscorable)
    return out


class GroupOptions(OnlineOptions):
    """Config shared by GRPO and RLOO (group sampling, clipping, KL to the reference)."""

    num_generations: Count
    beta: NonNegative
    epsilon: Positive
    num_iterations: Count
    mask_truncated_completions: bool

    @model_validator(mode="after")
    def _whole_groups(self):
        if self.num_generations < 2:
            raise ValueError(f"num_generations: {self.num_generations} is too few: a group needs at least 2 responses")
        if (self.batch_size * self.grad_accum) % self.num_generations:
            raise ValueError(f"batch_size: batch_size * grad_accum ({self.batch_size} * {self.grad_accum}) must be a "
                             f"multiple of num_generations ({self.num_generations}): each generation batch holds "
                             "whole groups")
        return self


class _OnlineBase:
    """GRPO and RLOO: the options of ``Options`` (YAML defaults) set as attributes."""

    name = "online"
    needs_pairs = False
    needs_reward = True
    Options: ClassVar[type[GroupOptions]] = GroupOptions

    def __init__(self, **options):
        take_options(self, self.Options, options)

    # what the subclass adds
    def _trainer_classes(self):
        raise NotImplementedError

    def _extra_args(self) -> dict[str, Any]:
        return {}

    def train(self, ctx: TrainContext) -> dict[str, float]:
        """Sample, score with ``ctx.reward``, update; save the policy to ``ctx.output_dir``."""
        from datasets import Dataset

        from rlaif.models import load_causal_lm, load_tokenizer

        config_cls, trainer_cls = self._trainer_classes()
        output_dir = Path(ctx.output_dir)
        max_new = self.max_new_tokens or ctx.max_new_tokens
        tok = load_tokenizer(ctx.policy_path, ctx.trust_remote_code)
        model = load_causal_lm(ctx.policy_path, self.dtype, ctx.trust_remote_code)
        reward = CountingReward(ctx, tok, model)
        args = config_cls(
            **common_args(self, ctx.seed, output_dir, self.max_steps, ctx.checkpoint_dir), disable_dropout=True,
            num_generations=self.num_generations, max_completion_length=max_new,
            temperature=self.temperature if self.temperature is not None else ctx.temperature, top_p=ctx.top_p,
            beta=self.beta, epsilon=self.epsilon, num_iterations=self.num_iterations,
            mask_truncated_completions=self.mask_truncated_completions, **self.vllm.trl_args(),
            trust_remote_code=ctx.trust_remote_code, log_completions=False, **self._extra_args(),
        )
        # One generation samples generation_batch_size responses (all processes) and feeds
        # steps_per_generation * num_iterations micro-steps; an optimizer step is grad_accum micro-steps.
        group_prompts = args.generation_batch_size // self.num_generations
        if len(ctx.prompts) < group_prompts:
            raise ValueError(f"{self.name} samples {group_prompts} prompts per generation batch but got "
                             f"{len(ctx.prompts)} training prompts: add prompts or lower optimizer.batch_size")
        steps = budget_max_steps(ctx, args.generation_batch_size, args.steps_per_generation * self.num_iterations,
                                 args.gradient_accumulation_steps, max_new, self.name)
        if steps is not None:
            args.max_steps = steps
            log.info("%s: the budget allows %d optimizer steps", self.name, steps)
        data = Dataset.from_list([{"prompt": p.messages} for p in ctx.prompts])
        last: dict[str, float] = {}
        fwd = log_forwarder(ctx.log, last, self.name.upper(),
                            "lower optimizer.learning_rate or check the reward for extreme values")
        resume = resumer(args, ctx, last, reward)
        trainer = trainer_cls(model=model, reward_funcs=[reward], args=args, train_dataset=data,
                              processing_class=tok, peft_config=lora_config(self.lora),
                              callbacks=[c for c in (resume, fwd) if c])
        progress.attach(trainer, self.name)
        return train_resumable(trainer, resume, tok, output_dir, last, ctx, reward)


class GRPOOptions(GroupOptions):
    CONF: ClassVar[str] = "optimizer/grpo"
    loss_type: str  # TRL's GRPO loss (dapo, grpo, dr_grpo, bnpo, ...)
    scale_rewards: str  # group | batch | none


class GRPOOptimizer(_OnlineBase):
    """Group Relative Policy Optimization (Shao et al. 2024) through TRL's GRPOTrainer."""

    name = "grpo"
    Options = GRPOOptions

    def _trainer_classes(self):
        from trl import GRPOConfig, GRPOTrainer

        return GRPOConfig, GRPOTrainer

    def _extra_args(self):
        return {"loss_type": self.loss_type, "scale_rewards": self.scale_rewards}


class RLOOOptions(GroupOptions):
    CONF: ClassVar[str] = "optimizer/rloo"
    normalize_advantages: bool


class RLOOOptimizer(_OnlineBase):
    """REINFORCE Leave-One-Out (Ahmadian et al. 2024) through TRL's RLOOTrainer."""

    name = "rloo"

    Options = RLOOOptions

    def _trainer_classes(self):
        from trl import RLOOConfig, RLOOTrainer

        return RLOOConfig, RLOOTrainer

    def _extra_args(self):
        return {"normalize_advantages": self.normalize_advantages}
