"""Options shared by the optimizers that train through transformers' Trainer (DPO, GRPO, RLOO,
online DPO, constitutional SFT, the reward model). Each optimizer's own ``Options`` adds its
keys; the defaults are in its YAML under conf/ (rlaif/options.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from rlaif.options import (
    Count,
    Lora,
    MixedPrecision,
    NonNegative,
    Options,
    Positive,
    RewardReference,
    RewardSource,
    TrainDtype,
)

Epochs = Annotated[int | float, Field(gt=0)]


def take_options(obj, model: type[Options], given: dict) -> None:
    """Build ``model`` from the YAML defaults and ``given``; set every option on ``obj`` (as
    ``obj.options`` and one attribute each), with the precision keys resolved for training and
    ``lora`` as a plain dict (checkpoints store it as JSON)."""
    from rlaif.precision import mixed_precision, training_dtype

    obj.options = o = model.build(given)
    for key in model.model_fields:
        setattr(obj, key, getattr(o, key))
    obj.dtype, obj.mixed_precision = training_dtype(o.dtype), mixed_precision(o.mixed_precision)
    obj.lora = o.lora.model_dump()


class TrainingOptions(Options):
    learning_rate: Positive
    epochs: Epochs
    batch_size: Count
    grad_accum: Count
    lr_scheduler: str
    warmup_ratio: float
    max_grad_norm: NonNegative  # 0: no clipping
    dtype: TrainDtype
    mixed_precision: MixedPrecision
    logging_steps: Count
    save_steps: Count | None  # checkpoint every this many steps (null: never); changes no weight
    lora: Lora

    @field_validator("warmup_ratio")
    @classmethod
    def _warmup(cls, v):
        # TrainingArguments (transformers >= 5) reads a float below 1 as a share of the steps, 1 or more as steps
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{v} must be in [0, 1): it is the share of the training steps spent warming the "
                             "learning rate up (e.g. 0.1)")
        return v


class RewardOptions(Options):
    """What every optimizer that calls a reward declares: where it comes from (checked against the
    judge in config.validate)."""

    reward_source: RewardSource
    reward_reference: RewardReference


class TRLvLLMOptions(Options):
    """TRL's own vLLM generation inside its online trainers (``optimizer.vllm``): TRL's ``use_vllm``
    and ``vllm_*`` settings, for GPU machines with vLLM installed."""

    enabled: bool
    mode: Literal["colocate", "server"]
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)]
    tensor_parallel_size: Count
    server_base_url: str | None
    enable_sleep_mode: bool

    def trl_args(self) -> dict:
        """The keyword arguments of TRL's GRPOConfig / RLOOConfig / OnlineDPOConfig."""
        if not self.enabled:
            return {"use_vllm": False}
        args = {"use_vllm": True, "vllm_mode": self.mode, "vllm_enable_sleep_mode": self.enable_sleep_mode}
        if self.mode == "colocate":
            args.update(vllm_gpu_memory_utilization=self.gpu_memory_utilization,
                        vllm_tensor_parallel_size=self.tensor_parallel_size)
        elif self.server_base_url:
            args["vllm_server_base_url"] = self.server_base_url
        return args


class OnlineOptions(TrainingOptions, RewardOptions):
    """What the TRL-based online optimizers add to the training options."""

    max_steps: Count | None
    temperature: Positive | None  # null: the generator's
    max_new_tokens: Count | None  # null: the generator's
    gradient_checkpointing: bool
    vllm: TRLvLLMOptions


GenerationLoss = Literal["sigmoid", "ipo"]
