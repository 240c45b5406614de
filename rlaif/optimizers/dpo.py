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

from rlaif.types import PreferencePair

log = logging.getLogger(__name__)

LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


class NonFiniteLossError(RuntimeError):
    pass


class DPOOptimizer:
    name = "dpo"
    needs_pairs = True

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

    def train(self, model_path: str, pairs: list[PreferencePair], output_dir: str | Path, seed: int,
              tracker=None, trust_remote_code: bool = False) -> dict[str, float]:
        """Train on ``pairs`` and save the policy to ``output_dir``. Returns final training metrics."""
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import DPOConfig, DPOTrainer

        from rlaif.models import load_causal_lm, load_tokenizer

        if not pairs:
            raise ValueError("DPO got no preference pairs: lower preferences.min_margin or sample more candidates")
        output_dir = Path(output_dir)
        tok = load_tokenizer(model_path, trust_remote_code)
        model = load_causal_lm(model_path, self.dtype, trust_remote_code)
        data = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])
        args = DPOConfig(
            output_dir=str(output_dir / "trainer"), beta=self.beta, loss_type=[self.loss_type],
            label_smoothing=self.label_smoothing, learning_rate=self.learning_rate,
            num_train_epochs=self.epochs, per_device_train_batch_size=self.batch_size,
            gradient_accumulation_steps=self.grad_accum, max_length=self.max_length,
            warmup_steps=self.warmup_ratio, lr_scheduler_type=self.lr_scheduler, weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm, precompute_ref_log_probs=self.precompute_ref_log_probs,
            logging_steps=self.logging_steps, save_strategy="no", report_to=[], seed=seed, data_seed=seed,
            bf16=self.dtype == "bfloat16" or self.mixed_precision == "bf16", dataloader_num_workers=0, disable_dropout=True,
            use_cpu=not torch.cuda.is_available(),
        )
        peft_config = None
        if self.lora.get("enabled"):
            from peft import LoraConfig

            peft_config = LoraConfig(r=self.lora.get("r", 16), lora_alpha=self.lora.get("alpha", 32),
                                     lora_dropout=self.lora.get("dropout", 0.0),
                                     target_modules=self.lora.get("target_modules", "all-linear"), task_type="CAUSAL_LM")
        history: list[dict] = []

        class _Forward(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                logs = dict(logs or {})
                loss = logs.get("loss")
                if loss is not None and not math.isfinite(loss):
                    raise NonFiniteLossError(f"DPO loss became {loss} at step {state.global_step}; lower "
                                             "optimizer.learning_rate or check the preference data")
                row = {f"train/{k}": v for k, v in logs.items() if isinstance(v, (int, float))}
                row["train/step"] = state.global_step
                history.append(row)
                if tracker is not None:
                    tracker.log(row)

        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                             peft_config=peft_config, callbacks=[_Forward()])
        trainer.train()
        final = trainer.model
        if peft_config is not None:
            final = final.merge_and_unload()
        final.save_pretrained(output_dir, safe_serialization=True)
        tok.save_pretrained(output_dir)
        last = {k: v for row in history for k, v in row.items()}
        return last
