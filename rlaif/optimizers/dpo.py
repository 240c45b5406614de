"""Offline DPO through TRL's DPOTrainer.

Trains a fresh copy of the policy (never the pool's frozen instance that the judge may share),
logs through the run's tracker under ``train/``, and saves the result as a safetensors folder
(LoRA adapters are merged, so evaluation loads one plain model).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from rlaif.optimizers.base import NonFiniteLossError, TrainContext, lora_config, save_policy

log = logging.getLogger(__name__)

LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


class DPOOptimizer:
    name = "dpo"
    needs_pairs = True
    needs_reward = False

    def __init__(self, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                 learning_rate: float = 5e-6, epochs: int = 1, batch_size: int = 8, grad_accum: int = 1,
                 max_length: int = 256, warmup_ratio: float = 0.0, lr_scheduler: str = "linear",
                 weight_decay: float = 0.0, max_grad_norm: float = 1.0, precompute_ref_log_probs: bool = True,
                 dtype: str = "float32", mixed_precision: str = "no", lora: dict | None = None, logging_steps: int = 1, **_unused):
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        self.learning_rate, self.epochs, self.batch_size, self.grad_accum = learning_rate, epochs, batch_size, grad_accum
        self.max_length, self.warmup_ratio, self.lr_scheduler = max_length, warmup_ratio, lr_scheduler
        self.weight_decay, self.max_grad_norm = weight_decay, max_grad_norm
        self.precompute_ref_log_probs, self.dtype = precompute_ref_log_probs, dtype
        self.mixed_precision = mixed_precision
        self.lora = dict(lora or {})
        self.logging_steps = logging_steps

    def train(self, ctx: TrainContext) -> dict[str, float]:
        """Train on ``ctx.pairs`` and save the policy to ``ctx.output_dir``. Returns final training metrics."""
        return train_dpo(self, ctx.policy_path, ctx.pairs, Path(ctx.output_dir), ctx.seed, ctx, ctx.trust_remote_code)


def train_dpo(opt: DPOOptimizer, model_path: str, pairs: list, output_dir: Path, seed: int, ctx: TrainContext,
              trust_remote_code: bool = False, step_offset: int = 0) -> dict[str, float]:
    """One DPO run from ``model_path`` on ``pairs`` (also one round of iterative/self-rewarding DPO)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from rlaif.models import load_causal_lm, load_tokenizer

    if not pairs:
        raise ValueError("DPO got no preference pairs: lower preferences.min_margin or sample more candidates")
    tok = load_tokenizer(model_path, trust_remote_code)
    model = load_causal_lm(model_path, opt.dtype, trust_remote_code)
    data = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])
    args = DPOConfig(
        output_dir=str(output_dir / "trainer"), beta=opt.beta, loss_type=[opt.loss_type],
        label_smoothing=opt.label_smoothing, learning_rate=opt.learning_rate,
        num_train_epochs=opt.epochs, per_device_train_batch_size=opt.batch_size,
        gradient_accumulation_steps=opt.grad_accum, max_length=opt.max_length,
        warmup_steps=opt.warmup_ratio, lr_scheduler_type=opt.lr_scheduler, weight_decay=opt.weight_decay,
        max_grad_norm=opt.max_grad_norm, precompute_ref_log_probs=opt.precompute_ref_log_probs,
        logging_steps=opt.logging_steps, save_strategy="no", report_to=[], seed=seed, data_seed=seed,
        bf16=opt.dtype == "bfloat16" or opt.mixed_precision == "bf16", dataloader_num_workers=0, disable_dropout=True,
        use_cpu=not torch.cuda.is_available(),
    )
    last: dict[str, float] = {}

    class _Forward(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            logs = dict(logs or {})
            loss = logs.get("loss")
            if loss is not None and not math.isfinite(loss):
                raise NonFiniteLossError(f"DPO loss became {loss} at step {state.global_step}; lower "
                                         "optimizer.learning_rate or check the preference data")
            row = {f"train/{k}": v for k, v in logs.items() if isinstance(v, (int, float))}
            last.update(row)
            ctx.log(row, step=step_offset + state.global_step)

    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                         peft_config=lora_config(opt.lora), callbacks=[_Forward()])
    trainer.train()
    output_dir.mkdir(parents=True, exist_ok=True)
    save_policy(trainer.model, tok, output_dir)
    import shutil

    shutil.rmtree(output_dir / "trainer", ignore_errors=True)
    return last
