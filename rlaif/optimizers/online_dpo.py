"""Online DPO with AI feedback (OAIF, Guo et al. 2024) through TRL's experimental OnlineDPOTrainer.

Each step the policy samples two fresh responses per prompt, the judge (``ctx.reward``, a pointwise
reward) scores both, the higher-scored one becomes "chosen", and a DPO loss against a frozen copy of
the starting policy (or the LoRA-disabled base) updates the policy. Unlike offline DPO the pairs are
on-policy; no reward model or judge object is trained or loaded here.

A pair in which either response is unscorable (the judge gave no usable verdict) does not train:
TRL would sum its rewards with ``nansum`` and pick a winner from a reward of 0, so the wrapper
zeroes that pair's gradient (the step's loss is the mean over the scorable pairs) and counts it in
``train/unscorable_pairs``. TRL computes the policy's log-probabilities before the rewards exist,
so the mask is applied where the gradient flows back through them (``_PairGate``). The logged
``loss`` is TRL's, over all pairs.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field

from rlaif import progress
from rlaif.optimizers.base import TrainContext, lora_config
from rlaif.optimizers.options import OnlineOptions, take_options
from rlaif.optimizers.trl_online import (
    CountingReward,
    budget_max_steps,
    common_args,
    log_forwarder,
    resumer,
    train_resumable,
)
from rlaif.options import NonNegative, Positive

log = logging.getLogger(__name__)


class _PairGate(torch.autograd.Function):
    """Identity on the policy's log-probabilities; on the way back, zeroes the rows of unscorable pairs
    and rescales the rest, so the gradient is that of the mean loss over the scorable pairs.

    ``state.keep`` (a bool per pair, or None: all) is set by the reward after this forward pass and
    read in ``backward``; rows are ``[first responses..., second responses...]`` as TRL stacks them.
    """

    @staticmethod
    def forward(ctx, logprobs, state):
        ctx.state = state
        return logprobs.clone()  # a fresh tensor: views returned from a custom Function are restricted

    @staticmethod
    def backward(ctx, grad):
        keep = ctx.state.keep
        if keep is None or bool(keep.all()):
            return grad, None
        rows = torch.cat([keep, keep]).to(device=grad.device, dtype=grad.dtype)
        scale = keep.numel() / max(int(keep.sum()), 1)
        return grad * rows.view(-1, *([1] * (grad.dim() - 1))) * scale, None


class _GateState:
    keep = None


class _PairCountingReward(CountingReward):
    """Also counts pairs in which either response was unscorable, and marks them for ``_PairGate``."""

    unscorable_pairs = 0

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.gate = _GateState()

    def __call__(self, prompts, completions, completion_ids=None, **kw):
        out = super().__call__(prompts, completions, completion_ids=completion_ids, **kw)
        half = len(out) // 2  # TRL scores [first responses..., second responses...] for the same prompts
        keep = [math.isfinite(a) and math.isfinite(b) for a, b in zip(out[:half], out[half:], strict=True)]
        self.gate.keep = torch.tensor(keep, dtype=torch.bool)
        bad = keep.count(False)
        self.unscorable_pairs += bad
        if bad:
            log.warning("online DPO: %d of %d pairs had an unscorable response; they do not train", bad, half)
        return out


def _gated_trainer(base, gate: _GateState):
    """``base`` (TRL's OnlineDPOTrainer) whose policy log-probabilities pass through ``_PairGate``."""

    class GatedOnlineDPOTrainer(base):
        def _forward(self, model, *args, **kwargs):
            logprobs = super()._forward(model, *args, **kwargs)
            if not logprobs.requires_grad:  # the reference pass
                return logprobs
            gate.keep = None  # a new micro-step: its pairs are not scored yet
            return _PairGate.apply(logprobs, gate)

    return GatedOnlineDPOTrainer


class OnlineDPOOptions(OnlineOptions):
    """``optimizer=online_dpo`` (conf/optimizer/online_dpo.yaml has every default)."""

    CONF: ClassVar[str] = "optimizer/online_dpo"
    beta: Positive
    loss_type: Literal["sigmoid", "ipo"]  # what TRL's online DPO supports
    max_length: Annotated[int, Field(ge=8)]
    missing_eos_penalty: NonNegative | None


class OnlineDPOOptimizer:
    name = "online_dpo"
    needs_pairs = False
    needs_reward = True
    Options = OnlineDPOOptions

    def __init__(self, **options):
        take_options(self, OnlineDPOOptions, options)

    def train(self, ctx: TrainContext) -> dict[str, float]:
        """Sample two responses per prompt, let ``ctx.reward`` pick, DPO-update; save to ``ctx.output_dir``."""
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from datasets import Dataset
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

        from rlaif.models import load_causal_lm, load_tokenizer

        output_dir = Path(ctx.output_dir)
        max_new = self.max_new_tokens or ctx.max_new_tokens
        tok = load_tokenizer(ctx.policy_path, ctx.trust_remote_code)
        model = load_causal_lm(ctx.policy_path, self.dtype, ctx.trust_remote_code)
        reward = _PairCountingReward(ctx, tok, model)
        args = OnlineDPOConfig(
            **common_args(self, ctx.seed, output_dir, self.max_steps, ctx.checkpoint_dir), disable_dropout=True,
            beta=[self.beta],
            loss_type=self.loss_type, max_new_tokens=max_new, max_length=self.max_length,
            temperature=self.temperature if self.temperature is not None else ctx.temperature, top_p=ctx.top_p,
            missing_eos_penalty=self.missing_eos_penalty, trust_remote_code=ctx.trust_remote_code,
            **self.vllm.trl_args(),
        )
        # Each micro-step samples two responses for each of batch_size prompts (per process).
        steps = budget_max_steps(ctx, 2 * args.per_device_train_batch_size * args.world_size, 1,
                                 args.gradient_accumulation_steps, max_new, self.name)
        if steps is not None:
            args.max_steps = steps
            log.info("online DPO: the budget allows %d optimizer steps", steps)
        data = Dataset.from_list([{"prompt": p.messages} for p in ctx.prompts])
        last: dict[str, float] = {}
        fwd = log_forwarder(ctx.log, last, "online DPO", "lower optimizer.learning_rate or raise optimizer.beta")
        resume = resumer(args, ctx, last, reward)
        trainer = _gated_trainer(OnlineDPOTrainer, reward.gate)(
                                   model=model, reward_funcs=[reward], args=args, train_dataset=data,
                                   processing_class=tok, peft_config=lora_config(self.lora),
                                   callbacks=[c for c in (resume, fwd) if c])
        progress.attach(trainer, "online_dpo")
        out = train_resumable(trainer, resume, tok, output_dir, last, ctx, reward)
        out["train/unscorable_pairs"] = float(reward.unscorable_pairs)
        return out
