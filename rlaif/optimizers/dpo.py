"""Offline DPO through TRL's DPOTrainer.

Trains a fresh copy of the policy (never the pool's frozen instance that the judge may share),
logs through the run's tracker under ``train/``, and saves the result as a safetensors folder
(LoRA adapters are merged, so evaluation loads one plain model). With a checkpoint folder it saves
every ``save_steps`` optimizer steps and a rerun resumes from the newest complete checkpoint
(rlaif/optimizers/checkpoints.py), ending with the weights of an uninterrupted run.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator

from rlaif import progress
from rlaif.optimizers.base import NonFiniteLossError, TrainContext, lora_config, save_policy
from rlaif.optimizers.lm_head import plain_lm_head
from rlaif.optimizers.options import TrainingOptions, take_options
from rlaif.options import NonNegative, Positive

log = logging.getLogger(__name__)

LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


class DPOOptions(TrainingOptions):
    """``optimizer=dpo`` (conf/optimizer/dpo.yaml has every default)."""

    CONF: ClassVar[str] = "optimizer/dpo"
    beta: Positive
    loss_type: Literal[LOSS_TYPES]
    label_smoothing: float
    max_length: Annotated[int, Field(ge=8)]
    weight_decay: NonNegative
    precompute_ref_log_probs: bool
    gradient_checkpointing: bool  # passed to TRL's DPOConfig (whose own default is on)

    @field_validator("label_smoothing")
    @classmethod
    def _smoothing(cls, v):
        if not 0.0 <= v < 0.5:  # cDPO's assumed share of flipped labels; at 0.5 no preference is left
            raise ValueError(f"{v} must be in [0, 0.5): the assumed share of flipped preference labels")
        return v

    @model_validator(mode="after")
    def _smoothing_needs_a_loss_that_uses_it(self):
        if self.label_smoothing and self.loss_type not in ("robust", "exo_pair", "sigmoid"):
            raise ValueError("label_smoothing: only used by loss_type robust, exo_pair or sigmoid (cDPO)")
        return self


class DPOOptimizer:
    name = "dpo"
    needs_pairs = True
    needs_reward = False
    Options = DPOOptions

    def __init__(self, **options):
        take_options(self, DPOOptions, options)

    def train(self, ctx: TrainContext) -> dict[str, float]:
        """Train on ``ctx.pairs`` and save the policy to ``ctx.output_dir``. Returns final training metrics."""
        return train_dpo(self, ctx, DPORun(ctx.policy_path, ctx.pairs, Path(ctx.output_dir), ctx.checkpoint_dir))


@dataclass
class DPORun:
    """One DPO run: from ``model_path`` on ``pairs`` into ``output_dir``. ``checkpoint_dir``: save
    checkpoints there every ``save_steps`` steps and resume from the newest complete one (None: no
    checkpoints, e.g. inside self-rewarding rounds). ``step_offset``: where its logged steps start;
    ``seed``: the trainer's seed (None: the run's)."""

    model_path: str
    pairs: list
    output_dir: Path
    checkpoint_dir: Path | None = None
    step_offset: int = 0
    seed: int | None = None


def train_dpo(opt: DPOOptimizer, ctx: TrainContext, job: DPORun) -> dict[str, float]:
    """One DPO run (also one round of iterative/self-rewarding DPO); returns the last logged row."""
    from trl import DPOTrainer

    from rlaif.models import load_causal_lm, load_tokenizer
    from rlaif.optimizers.checkpoints import TrainerResume, checkpoint_args

    if not job.pairs:
        raise ValueError("DPO got no preference pairs: lower preferences.min_margin or sample more candidates")
    tok = load_tokenizer(job.model_path, ctx.trust_remote_code)
    model = load_causal_lm(job.model_path, opt.dtype, ctx.trust_remote_code)
    data = _pairs_dataset([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in job.pairs],
                          job.checkpoint_dir)
    saving = checkpoint_args(opt.save_steps, Path(job.checkpoint_dir) if job.checkpoint_dir else None,
                             job.output_dir, opt.logging_steps)
    last: dict[str, float] = {}
    resume = TrainerResume(ctx, last) if saving["save_strategy"] != "no" else None
    forward = _forwarder(opt, ctx, last, job.step_offset)
    peft = lora_config(opt.lora)
    own_ref = peft is None and not opt.precompute_ref_log_probs  # else TRL needs no reference model
    with plain_lm_head():  # on a CPU: full logits, not TRL's chunked fallback (rlaif/optimizers/lm_head.py)
        trainer = DPOTrainer(model=model, ref_model=reference_copy(model) if own_ref else None,
                             args=_dpo_config(opt, saving, ctx.seed if job.seed is None else job.seed),
                             train_dataset=data, processing_class=tok, peft_config=peft,
                             callbacks=[c for c in (resume, forward) if c])
        progress.attach(trainer, "dpo")
        if resume is not None:
            resume.attach(trainer)
        trainer.train(resume_from_checkpoint=resume.resume_from if resume else None)
    job.output_dir.mkdir(parents=True, exist_ok=True)
    save_policy(trainer.model, tok, job.output_dir)
    shutil.rmtree(job.output_dir / "trainer", ignore_errors=True)
    return last


def reference_copy(model):
    """A frozen in-memory copy of the policy as DPO's reference, for ``precompute_ref_log_probs: false``.
    Left to itself TRL would load it from the policy's folder a second time (slower, and bypassing the
    safetensors-only loader). Not needed with LoRA (the reference is the policy with its adapters off)
    or with precomputed reference log-probs (TRL runs the untrained policy over the pairs first)."""
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


def _dpo_config(opt: DPOOptimizer, saving: dict, seed: int):
    from trl import DPOConfig

    return DPOConfig(
        **saving, beta=opt.beta, **loss_args(opt.loss_type, opt.label_smoothing), learning_rate=opt.learning_rate,
        num_train_epochs=opt.epochs, per_device_train_batch_size=opt.batch_size,
        gradient_accumulation_steps=opt.grad_accum, max_length=opt.max_length,
        warmup_steps=opt.warmup_ratio, lr_scheduler_type=opt.lr_scheduler, weight_decay=opt.weight_decay,
        max_grad_norm=opt.max_grad_norm, precompute_ref_log_probs=opt.precompute_ref_log_probs,
        logging_steps=opt.logging_steps, report_to=[], seed=seed, data_seed=seed,
        logging_nan_inf_filter=False,  # log a NaN loss as NaN (the default averages it away, logging 0.0)
        bf16=opt.dtype == "bfloat16" or opt.mixed_precision == "bf16", fp16=opt.mixed_precision == "fp16",
        dataloader_num_workers=0, disable_dropout=True, gradient_checkpointing=opt.gradient_checkpointing,
        use_cpu=not torch.cuda.is_available(),
    )


def _forwarder(opt: DPOOptimizer, ctx: TrainContext, last: dict, step_offset: int):
    """A callback that logs TRL's rows through ``ctx.log`` and stops on a non-finite loss or gradient."""
    from transformers import TrainerCallback

    class _Forward(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            logs = dict(logs or {})
            bad = {k: v for k, v in logs.items() if k in ("loss", "grad_norm", "logps/chosen", "logps/rejected")
                   and isinstance(v, (int, float)) and not math.isfinite(v)}
            if bad:  # a NaN gradient is caught one step before it turns the weights (and the loss) into NaN
                raise NonFiniteLossError(
                    f"DPO training became non-finite at step {state.global_step} "
                    f"({', '.join(f'{k}={v}' for k, v in bad.items())}); lower optimizer.learning_rate (now "
                    f"{opt.learning_rate:g}) or check the preference data")
            row = {f"train/{k}": v for k, v in logs.items() if isinstance(v, (int, float))}
            last.update(row)
            ctx.log(row, step=step_offset + state.global_step)

    return _Forward()


def loss_args(loss_type: str, label_smoothing: float) -> dict:
    """DPOConfig's loss settings for our ``loss_type`` and ``label_smoothing``.

    TRL's sigmoid loss ignores label smoothing, so conservative DPO (cDPO: sigmoid with
    ``label_smoothing`` = eps) is put together from two of TRL's own losses. With z = beta * margin,
    cDPO is -(1 - eps) log s(z) - eps log s(-z) = -log s(z) + eps z, and TRL's robust loss is
    -log s(z) - eps z / (1 - 2 eps); so (2 - 2 eps) * sigmoid - (1 - 2 eps) * robust equals cDPO in
    value and gradient.
    """
    eps = float(label_smoothing)
    if loss_type == "sigmoid" and eps > 0:
        return {"loss_type": ["sigmoid", "robust"], "loss_weights": [2 - 2 * eps, -(1 - 2 * eps)],
                "label_smoothing": eps}
    return {"loss_type": [loss_type], "label_smoothing": eps}


def _pairs_dataset(rows: list[dict], checkpoint_dir):
    """The pairs as a Dataset. In a multi-process launch it is saved once into the (shared) checkpoint
    folder and read from there by every process: TRL writes its precomputed reference log-probs
    beside the dataset's files, and an in-memory dataset would put them in a folder of process 0's
    own that the other processes cannot read."""
    from datasets import Dataset, load_from_disk

    from rlaif import distributed

    if not distributed.enabled() or checkpoint_dir is None:
        return Dataset.from_list(rows)
    from accelerate import PartialState

    folder = Path(checkpoint_dir) / "pairs_dataset"
    with PartialState().main_process_first():
        if distributed.is_main() and not (folder / "state.json").exists():
            Dataset.from_list(rows).save_to_disk(str(folder))
    return load_from_disk(str(folder))
