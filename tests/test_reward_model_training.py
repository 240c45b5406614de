"""A reward model trained on preference pairs (distilled RLAIF) saves a folder that RewardModelJudge
loads and scores with, and reports held-out pair accuracy the way the judge would measure it."""

from __future__ import annotations

import math
import random

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoTokenizer

from rlaif.config import conf_dir
from rlaif.criteria import load_criterion
from rlaif.judges.reward_model import RewardModelJudge
from rlaif.optimizers.reward_model import RewardModelTrainer
from rlaif.types import PreferencePair, Prompt

POSITIVE = ["wonderful, moving and beautifully acted", "a great night at the cinema", "the cast and the score are great"]
NEGATIVE = ["dull, boring and terrible", "awful pacing and weak writing", "a boring movie with awful pacing"]


def make_pairs(n_prompts: int, per_prompt: int = 1, seed: int = 0) -> list[PreferencePair]:
    """Sentiment pairs: the praising continuation is chosen (a preference the tiny model can learn)."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n_prompts):
        chat = [{"role": "user", "content": f"Continue this movie review: the film {i} was"}]
        for j in range(per_prompt):
            pairs.append(PreferencePair(
                prompt=chat, chosen=[{"role": "assistant", "content": rng.choice(POSITIVE)}],
                rejected=[{"role": "assistant", "content": rng.choice(NEGATIVE)}], prompt_id=f"p{i}",
                chosen_index=2 * j, rejected_index=2 * j + 1, chosen_score=1.0, rejected_score=0.0, margin=1.0,
                judge="test", criterion="positive_sentiment"))
    return pairs


class RecordingTracker:
    """The tracker protocol's ``log``, keeping rows in memory."""

    def __init__(self):
        self.rows: list[dict] = []

    def log(self, metrics, step=None):
        self.rows.append(dict(metrics))


def as_prompt(pair: PreferencePair) -> Prompt:
    return Prompt(id=pair.prompt_id, text=pair.prompt[-1]["content"], messages=pair.prompt, split="eval")


def test_reward_model_trains_saves_and_scores_through_the_judge(tiny_model, tmp_path):
    pairs = make_pairs(40)
    tracker = RecordingTracker()
    trainer = RewardModelTrainer(learning_rate=1e-3, epochs=2, batch_size=6, eval_fraction=0.2)  # eval batches 6 + 2
    out = trainer.train(tiny_model, pairs, tmp_path / "rm", seed=0, tracker=tracker)

    assert out["reward_model/num_train_pairs"] == 32 and out["reward_model/num_eval_pairs"] == 8
    assert math.isfinite(out["reward_model/loss"]) and out["reward_model/accuracy"] >= 0.75
    logged = {k for row in tracker.rows for k in row}
    assert {"reward_model/train/loss", "reward_model/train/accuracy", "reward_model/eval/accuracy",
            "reward_model/eval/loss", "reward_model/step"} <= logged

    assert AutoConfig.from_pretrained(tmp_path / "rm").num_labels == 1
    assert (tmp_path / "rm" / "model.safetensors").exists() and not (tmp_path / "rm" / "trainer").exists()

    judge = RewardModelJudge(load_criterion("positive_sentiment"), model=str(tmp_path / "rm"), dtype="float32")
    _, held_out = trainer.split(pairs, 0, 0.2)
    chosen = judge.score([as_prompt(p) for p in held_out], [p.chosen[0]["content"] for p in held_out])
    rejected = judge.score([as_prompt(p) for p in held_out], [p.rejected[0]["content"] for p in held_out])
    assert all(s is not None and math.isfinite(s) for s in chosen + rejected)
    judge_accuracy = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(held_out)
    # the judge feeds the model the very tokens RewardTrainer trained on (TRL tokenizes prompt + chosen
    # with the chat template), and the accuracy is counted pair by pair
    tok = AutoTokenizer.from_pretrained(tmp_path / "rm")
    pair = held_out[0]
    trained_ids = tok.apply_chat_template(pair.prompt + pair.chosen, tokenize=True, return_dict=True)["input_ids"]
    assert judge.encode(as_prompt(pair), pair.chosen[0]["content"]) == list(trained_ids)
    assert judge_accuracy == pytest.approx(out["reward_model/accuracy"])


def test_held_out_split_is_seeded_and_by_prompt():
    trainer = RewardModelTrainer(min_eval_pairs=2)
    pairs = make_pairs(20, per_prompt=2)
    train, held = trainer.split(pairs, 3, 0.25)
    assert (train, held) == trainer.split(pairs, 3, 0.25)
    assert held != trainer.split(pairs, 4, 0.25)[1]
    assert len(held) == 10 and len(train) == 30
    assert not {p.prompt_id for p in train} & {p.prompt_id for p in held}
    # too few pairs to hold any out: train on everything, no held-out accuracy
    assert trainer.split(make_pairs(3), 0, 0.1) == (make_pairs(3), [])


def test_lora_reward_model_is_merged_and_loads(tiny_model, tmp_path):
    trainer = RewardModelTrainer(learning_rate=1e-2, batch_size=8, eval_fraction=0.0,
                                 lora={"enabled": True, "r": 4, "alpha": 8})
    out = trainer.train(tiny_model, make_pairs(8), tmp_path / "rm", seed=0)
    assert "reward_model/accuracy" not in out and math.isfinite(out["reward_model/train_accuracy"])
    assert not (tmp_path / "rm" / "adapter_config.json").exists()
    judge = RewardModelJudge(load_criterion("positive_sentiment"), model=str(tmp_path / "rm"), dtype="float32")
    pair = make_pairs(1)[0]
    assert all(math.isfinite(s) for s in judge.score([as_prompt(pair)] * 2, ["great", "awful"]))


def test_no_pairs_is_an_error(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="no preference pairs"):
        RewardModelTrainer().train(tiny_model, [], tmp_path / "rm", seed=0)


# our key -> the field of TRL's RewardConfig (the trainer's ``args``) it must arrive in
TRL_FIELDS = {"learning_rate": "learning_rate", "epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size",
              "grad_accum": "gradient_accumulation_steps", "max_length": "max_length",
              "center_rewards_coefficient": "center_rewards_coefficient", "lr_scheduler": "lr_scheduler_type",
              "warmup_ratio": "warmup_steps", "max_grad_norm": "max_grad_norm",
              "gradient_checkpointing": "gradient_checkpointing", "logging_steps": "logging_steps",
              "save_steps": "save_steps"}
# values unlike both our defaults and TRL's
TEST_VALUES = dict(learning_rate=3e-3, epochs=2, batch_size=3, grad_accum=2, max_length=90, eval_fraction=0.3,
                   min_eval_pairs=2, center_rewards_coefficient=0.05, lr_scheduler="cosine", warmup_ratio=0.25,
                   max_grad_norm=0.7, gradient_checkpointing=True, logging_steps=2, save_steps=4, mixed_precision="no",
                   lora={"enabled": True, "r": 2, "alpha": 4, "target_modules": "all-linear"})


def test_config_keys_reach_the_trl_trainer(tiny_model, tmp_path, started_trainers):
    cfg = OmegaConf.to_container(OmegaConf.load(conf_dir() / "reward_model" / "default.yaml"))
    assert cfg["_target_"] == "rlaif.optimizers.reward_model.RewardModelTrainer"
    handled = set(TRL_FIELDS) | {"_target_", "eval_fraction", "min_eval_pairs", "dtype", "mixed_precision", "lora",
                                 "judge_dtype", "judge_batch_size",  # read by the pipeline
                                 "method", "probe_layer", "probe_l2"}  # the probe path: tests/test_reward_probe.py
    assert set(cfg) <= handled, f"no check says where reward_model.{set(cfg) - handled} goes"
    started = started_trainers
    values = {**cfg, **TEST_VALUES}
    RewardModelTrainer(**{k: v for k, v in values.items() if k != "_target_"}).train(
        tiny_model, make_pairs(10), tmp_path / "rm", seed=0, checkpoint_dir=tmp_path / "ckpt")

    (trainer,) = started
    for key, field in TRL_FIELDS.items():
        got = getattr(trainer.args, field)
        got = getattr(got, "value", got)  # enums by their name
        assert got == pytest.approx(values[key]) if isinstance(got, float) else got == values[key], \
            f"reward_model.{key}={values[key]!r} reached TRL as {field}={got!r}"
    assert trainer.args.per_device_eval_batch_size == values["batch_size"]
    assert len(trainer.eval_dataset) == 3  # eval_fraction 0.3 of 10 prompts (one pair each), >= min_eval_pairs
    assert not trainer.args.bf16 and not trainer.args.fp16  # mixed_precision: "no"
    assert hasattr(trainer.model, "peft_config")  # lora.enabled
    assert next(trainer.model.parameters()).dtype == torch.float32  # dtype: auto trains float32 weights


_RESUMABLE = dict(learning_rate=1e-3, epochs=2, batch_size=4, eval_fraction=0.2, save_steps=1)


def _train_resumable(tiny_model, out, ckpt, tracker=None):
    """Reward-model training checkpointing every step into ``ckpt`` (also run in a child process below)."""
    return RewardModelTrainer(**_RESUMABLE).train(tiny_model, make_pairs(24), out, seed=1, tracker=tracker,
                                                  checkpoint_dir=ckpt)


def test_reward_model_killed_mid_training_resumes_to_the_same_weights_and_metrics(tiny_model, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    ckpt = tmp_path / "ckpt"
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from test_reward_model_training import _train_resumable\n"
              f"_train_resumable({tiny_model!r}, {str(tmp_path / 'killed')!r}, {str(ckpt)!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 120
    while time.time() < deadline and len(list(ckpt.glob("checkpoint-*/rlaif_state.json"))) < 1:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the training finished before it could be killed"
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    step = max(int(p.parent.name.split("-")[1]) for p in ckpt.glob("checkpoint-*/rlaif_state.json"))
    assert step >= 1

    tracker = RecordingTracker()
    resumed = _train_resumable(tiny_model, tmp_path / "resumed", ckpt, tracker)
    whole = _train_resumable(tiny_model, tmp_path / "whole", tmp_path / "fresh-ckpt")
    # the resumed run trained only the steps after the checkpoint, and ends where the whole run ends
    steps = sorted({row["reward_model/step"] for row in tracker.rows if "reward_model/train/loss" in row})
    assert steps and steps[0] > step
    assert resumed == whole
    a, b = load_file(str(tmp_path / "resumed" / "model.safetensors")), load_file(str(tmp_path / "whole" / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in b)
