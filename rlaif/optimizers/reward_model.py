"""Reward-model training on AI preference pairs ("distilled RLAIF", Lee et al. 2023), through TRL.

The judge's preference pairs train a Bradley-Terry reward model (TRL's RewardTrainer): a copy of the
policy with a one-output sequence-classification head, scoring the chat-formatted (prompt, response).
The pipeline then uses it as the reward for PPO/GRPO in place of the judge, which is cheaper per call
and smooth. The saved folder (safetensors, tokenizer, ``num_labels=1``) is what
``rlaif.judges.RewardModelJudge`` loads; held-out pair accuracy says how well it learned the judge.

This module only trains and saves; it never calls the judge. With ``checkpoint_dir`` and
``save_steps`` it checkpoints like the other Trainer-based optimizers (rlaif/optimizers/checkpoints.py):
a rerun after a kill resumes from the newest complete checkpoint and ends with the weights and
metrics of an uninterrupted run.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, ClassVar

from pydantic import Field

from rlaif import distributed, progress
from rlaif.optimizers.options import TrainingOptions, take_options
from rlaif.optimizers.trl_online import common_args, log_forwarder
from rlaif.options import Count, Dtype, NonNegative
from rlaif.types import PreferencePair

log = logging.getLogger(__name__)


class RewardModelOptions(TrainingOptions):
    """``reward_model`` (conf/reward_model/default.yaml has every default)."""

    CONF: ClassVar[str] = "reward_model/default"
    max_length: Annotated[int, Field(ge=8)]
    eval_fraction: Annotated[float, Field(ge=0, lt=1)]
    min_eval_pairs: Count
    center_rewards_coefficient: NonNegative | None
    gradient_checkpointing: bool
    judge_dtype: Dtype  # the trained reward model scoring the online optimizer's samples
    judge_batch_size: Count


class RewardModelTrainer:
    Options = RewardModelOptions

    def __init__(self, **options):
        take_options(self, RewardModelOptions, options)

    def split(self, pairs: list[PreferencePair], seed: int, eval_fraction: float) -> tuple[list, list]:
        """Seeded held-out split by prompt (no prompt in both parts); no held-out part when it would hold
        fewer than ``min_eval_pairs`` pairs or leave nothing to train on."""
        prompt_ids = sorted({p.prompt_id for p in pairs})
        random.Random(seed).shuffle(prompt_ids)
        held = set(prompt_ids[: int(round(eval_fraction * len(prompt_ids)))])
        train = [p for p in pairs if p.prompt_id not in held]
        evals = [p for p in pairs if p.prompt_id in held]
        if len(evals) < max(1, self.min_eval_pairs) or not train:
            if eval_fraction > 0:
                log.warning("reward model: %d pairs over %d prompts are too few for a held-out split "
                            "(min_eval_pairs=%d); training on all of them, no held-out accuracy",
                            len(pairs), len(prompt_ids), self.min_eval_pairs)
            return list(pairs), []
        return train, evals

    def train(self, base_model_path: str, pairs: list[PreferencePair], output_dir, seed: int, tracker=None,
              trust_remote_code: bool = False, checkpoint_dir: Path | None = None) -> dict[str, float]:
        """Train on ``pairs`` starting from ``base_model_path``; save to ``output_dir``; return
        ``reward_model/...`` metrics (``loss``: mean training loss; ``accuracy``: held-out pair accuracy).

        ``checkpoint_dir``: where checkpoints go every ``save_steps`` steps, and where a rerun looks
        for one to resume from (None: no checkpoints)."""
        from datasets import Dataset
        from trl import RewardConfig, RewardTrainer

        from rlaif.models import load_tokenizer
        from rlaif.optimizers.trl_online import resumer

        if not pairs:
            raise ValueError("the reward model got no preference pairs: label more candidates with the judge or "
                             "lower preferences.min_margin")
        output_dir = Path(output_dir)
        train_pairs, eval_pairs = self.split(pairs, seed, self.eval_fraction)
        tok = load_tokenizer(base_model_path, trust_remote_code)
        model = self._scoring_model(base_model_path, tok, seed, trust_remote_code)

        def dataset(ps):
            return Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in ps])

        args = RewardConfig(**common_args(self, seed, output_dir, checkpoint_dir=checkpoint_dir),
                            max_length=self.max_length,
                            center_rewards_coefficient=self.center_rewards_coefficient, disable_dropout=True,
                            trust_remote_code=trust_remote_code, per_device_eval_batch_size=self.batch_size)
        last: dict[str, float] = {}
        # What TrainerResume keeps beside each checkpoint (logged rows, counters) lives in this stand-in
        # for an optimizer's TrainContext; the reward model has no judge calls or generations to count.
        state = SimpleNamespace(checkpoint_dir=checkpoint_dir, history=[], counters={})
        resume = resumer(args, state, last)
        fwd = log_forwarder(_log_to(tracker), last, "reward model", "lower reward_model.learning_rate", prefix="")
        trainer = RewardTrainer(model=model, args=args, train_dataset=dataset(train_pairs),
                                eval_dataset=dataset(eval_pairs) if eval_pairs else None, processing_class=tok,
                                peft_config=_seq_cls_lora(self.lora), callbacks=[c for c in (resume, fwd) if c])
        progress.attach(trainer, "reward model")
        kept = len(trainer.train_dataset)
        if kept == 0:
            raise ValueError(f"every training pair is longer than reward_model.max_length={self.max_length} tokens")
        if resume is not None:
            resume.attach(trainer)
        trainer.train(resume_from_checkpoint=resume.resume_from if resume is not None else None)
        out = _results(trainer, last, kept, len(train_pairs), eval_pairs)
        if distributed.is_main():  # process 0 saves the weights every process holds
            _save(trainer.model, tok, output_dir)
        return out  # the caller logs these (the pipeline also caches them)

    def _scoring_model(self, base_model_path: str, tok, seed: int, trust_remote_code: bool):
        """The policy with a new scalar head (initialised from ``seed``)."""
        import torch
        from transformers import AutoModelForSequenceClassification

        from rlaif.models import torch_dtype

        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            base_model_path, num_labels=1, dtype=torch_dtype(self.dtype), trust_remote_code=trust_remote_code,
            use_safetensors=True)
        model.config.pad_token_id = tok.pad_token_id  # the head reads each row's last non-pad token
        return model


def _log_to(tracker):
    def log_fn(row, step=None):  # TRL's keys -> reward_model/train/... and reward_model/eval/...
        if tracker is not None:
            tracker.log({f"reward_model/eval/{k[5:]}" if k.startswith("eval_") else f"reward_model/train/{k}": v
                         for k, v in row.items()} | {"reward_model/step": step})
    return log_fn


def _results(trainer, last: dict, kept: int, train_pairs: int, eval_pairs: list) -> dict[str, float]:
    out = {"reward_model/num_train_pairs": float(kept),
           "reward_model/dropped_long_pairs": float(train_pairs - kept),
           "reward_model/num_eval_pairs": float(len(eval_pairs)),
           "reward_model/loss": last.get("train_loss", float("nan")),  # mean over training
           "reward_model/train_accuracy": last.get("accuracy", float("nan"))}  # the last logged batches
    if eval_pairs and len(trainer.eval_dataset) > 0:
        ev = trainer.evaluate()
        out["reward_model/accuracy"] = _pair_accuracy(trainer)
        out["reward_model/eval_loss"] = float(ev.get("eval_loss", float("nan")))
        out["reward_model/eval_margin"] = float(ev.get("eval_margin", float("nan")))
        out["reward_model/num_eval_pairs"] = float(len(trainer.eval_dataset))
    return out


def _save(model, tok, output_dir: Path) -> None:
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    output_dir.mkdir(parents=True, exist_ok=True)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(output_dir, safe_serialization=True)
    tok.save_pretrained(output_dir)
    shutil.rmtree(output_dir / "trainer", ignore_errors=True)


def _pair_accuracy(trainer) -> float:
    """Share of held-out pairs whose chosen response gets the higher reward, counted pair by pair
    (TRL's logged eval accuracy is a mean of per-batch means)."""
    import torch

    model = trainer.model
    model.eval()
    wins = []
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader():
            batch = trainer._prepare_inputs(batch)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
            chosen, rejected = logits.float().chunk(2)  # the collator stacks chosen rows, then rejected rows
            wins.append(trainer.accelerator.gather_for_metrics(chosen > rejected))
    wins = torch.cat(wins)
    return float(wins.float().mean())


def _seq_cls_lora(lora: dict | None):
    """LoRA for a sequence-classification model: the new score head is trained in full (PEFT's SEQ_CLS task
    keeps it in ``modules_to_save``), the backbone through adapters."""
    if not (lora or {}).get("enabled"):
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora.get("r", 16), lora_alpha=lora.get("alpha", 32), lora_dropout=lora.get("dropout", 0.0),
                      target_modules=lora.get("target_modules", "all-linear"), task_type="SEQ_CLS")
