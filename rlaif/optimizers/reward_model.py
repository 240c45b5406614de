"""Reward-model training on AI preference pairs ("distilled RLAIF", Lee et al. 2023), through TRL.

The judge's preference pairs train a Bradley-Terry reward model (TRL's RewardTrainer): a copy of the
policy with a one-output sequence-classification head, scoring the chat-formatted (prompt, response).
The pipeline then uses it as the reward for PPO/GRPO in place of the judge, which is cheaper per call
and smooth. The saved folder (safetensors, tokenizer, ``num_labels=1``) is what
``rlaif.judges.RewardModelJudge`` loads; held-out pair accuracy says how well it learned the judge.

``method: probe`` trains a linear probe instead (a small proxy that trains in one forward pass): the
policy's first ``probe_layer`` blocks stay frozen, their last hidden state is averaged over each
response's tokens, and a Bradley-Terry linear head with an L2 penalty (``probe_l2``, on standardised
features) is fitted to the pairs. The folder saved holds those blocks and the head, with
``rlaif_pooling: response_mean`` in its config so that the judge reads the score the same way; it
is about ``probe_layer / num_layers`` as expensive to score with as the policy.

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
from typing import Annotated, ClassVar, Literal

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
    method: Literal["finetune", "probe"]
    probe_layer: Count | None  # probe: frozen blocks kept (the features are the last one's output); null: all
    probe_l2: NonNegative  # probe: L2 penalty on the head's weights over standardised features


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
        if self.method == "probe":
            return self._train_probe(base_model_path, train_pairs, eval_pairs, output_dir, seed, trust_remote_code)
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


    # ----------------------------------------------------------------------------------- probe
    def _train_probe(self, base_model_path: str, train_pairs: list, eval_pairs: list, output_dir: Path,
                     seed: int, trust_remote_code: bool) -> dict[str, float]:
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification

        from rlaif.judges.reward_model import encode_response
        from rlaif.models import load_tokenizer, torch_dtype
        from rlaif.precision import inference_dtype

        config = AutoConfig.from_pretrained(base_model_path, trust_remote_code=trust_remote_code)
        layers = int(config.num_hidden_layers)
        keep = layers if self.probe_layer is None else self.probe_layer
        if keep > layers:
            raise ValueError(f"reward_model.probe_layer={keep}: {base_model_path} has {layers} blocks; use 1 to "
                             f"{layers} (or null for all of them)")
        tok = load_tokenizer(base_model_path, trust_remote_code)
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            base_model_path, num_labels=1, num_hidden_layers=keep, dtype=torch_dtype(inference_dtype(self.judge_dtype)),
            trust_remote_code=trust_remote_code, use_safetensors=True)
        model.config.pad_token_id = tok.pad_token_id
        model.eval().requires_grad_(False)
        if torch.cuda.is_available():  # this process's GPU (one per process under a multi-process launch)
            model.to(torch.device("cuda", torch.cuda.current_device()))

        def encode(p, side):
            return encode_response(tok, p.prompt, side[0]["content"], self.max_length)

        rows = [(encode(p, p.chosen), encode(p, p.rejected)) for p in train_pairs + eval_pairs]
        feats = _pooled_features(model, tok, [x for pair in rows for x in pair], self.judge_batch_size)
        chosen, rejected = feats[0::2], feats[1::2]
        n = len(train_pairs)
        both = torch.cat([chosen[:n], rejected[:n]])
        std = both.std(0).clamp(min=1e-6)
        w, loss = _fit_bradley_terry((chosen[:n] - rejected[:n]) / std, self.probe_l2)
        with torch.no_grad():  # the head on raw features: the standardisation's scale folds into it
            weight = (w / std).to(model.score.weight.dtype)
            model.score.weight.copy_(weight.unsqueeze(0))
            margins = (chosen - rejected) @ weight.float()
        out = {"reward_model/num_train_pairs": float(n), "reward_model/dropped_long_pairs": 0.0,
               "reward_model/num_eval_pairs": float(len(eval_pairs)), "reward_model/loss": loss,
               "reward_model/train_accuracy": float((margins[:n] > 0).float().mean()),
               "reward_model/probe_layer": float(keep)}
        if eval_pairs:
            out["reward_model/accuracy"] = float((margins[n:] > 0).float().mean())
            out["reward_model/eval_margin"] = float(margins[n:].mean())
        log.info("reward model (probe on block %d of %d): train accuracy %.3f%s", keep, layers,
                 out["reward_model/train_accuracy"],
                 f", held-out {out['reward_model/accuracy']:.3f}" if eval_pairs else "")
        if distributed.is_main():
            model.config.rlaif_pooling = "response_mean"
            model.config.rlaif_probe = {"layer": keep, "of_layers": layers, "l2": self.probe_l2}
            _save(model, tok, output_dir)
        return out


def _pooled_features(model, tok, encoded: list[tuple[list[int], int]], batch_size: int):
    """[len(encoded), hidden] float32: each sequence's mean response hidden state, in length-sorted batches."""
    import torch

    from rlaif.judges.reward_model import response_mean_hidden, right_pad

    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    out: list = [None] * len(encoded)
    bar = progress.bar(total=len(encoded), desc="reward model probe features", unit="seq")
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            ids, attn = right_pad([encoded[i][0] for i in idx], tok.pad_token_id)
            pooled = response_mean_hidden(model, ids.to(device), attn.to(device), [encoded[i][1] for i in idx]).cpu()
            for r, i in enumerate(idx):
                out[i] = pooled[r]
            bar.update(len(idx))
    bar.close()
    return torch.stack(out)


def _fit_bradley_terry(diff, l2: float) -> tuple:
    """Weights w minimising mean(-log sigmoid(diff @ w)) + l2 * |w|^2 (convex; L-BFGS from w = 0);
    returns (w, the mean logistic loss without the penalty)."""
    import torch

    w = torch.zeros(diff.shape[1], dtype=torch.float64, requires_grad=True)
    x = diff.double()
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -torch.nn.functional.logsigmoid(x @ w).mean() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = float(-torch.nn.functional.logsigmoid(x @ w).mean())
    return w.detach().float(), loss


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
