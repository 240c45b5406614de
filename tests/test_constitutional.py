"""Constitutional AI's supervised stage: the tiny policy answers, critiques, revises and is fine-tuned
on its revisions; every step is recorded in revisions.jsonl with the principle it used."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rlaif.config import conf_dir
from rlaif.criteria import Criterion, load_criterion
from rlaif.io import read_jsonl
from rlaif.optimizers.base import TrainContext
from rlaif.optimizers.constitutional import ConstitutionalSFT, clean_revision
from rlaif.types import Prompt


def make_prompts(n: int = 6) -> list[Prompt]:
    return [Prompt(id=f"p{i}", text=f"q{i}", split="train",
                   messages=[{"role": "user", "content": f"Continue this movie review: the film {i} was"}])
            for i in range(n)]


def weights(path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_cai_sft_revises_records_and_trains(tiny_model, tmp_path):
    criterion = load_criterion("constitution")
    ctx = TrainContext(policy_path=tiny_model, output_dir=tmp_path / "out", seed=3, prompts=make_prompts(),
                       criterion=criterion, max_new_tokens=8)
    start = weights(tiny_model)
    out = ConstitutionalSFT(learning_rate=1e-2, batch_size=4, critique_max_new_tokens=8, num_revisions=2).train(ctx)

    records = read_jsonl(tmp_path / "out" / "revisions.jsonl")
    assert len(records) == 6 * 2
    for r in records:
        assert r["principle"] in criterion.principles
        key = (r["prompt_id"],) if r["round"] == 0 else (r["prompt_id"], str(r["round"]))
        assert r["principle"] == criterion.principle_for(3, *key)
        assert set(r) >= {"prompt_id", "principle", "response", "critique", "revision", "used", "skip_reason"}
        assert not (r["used"] and r["skip_reason"])
    assert len({r["principle"] for r in records}) > 1  # principles vary across prompts
    used = [r for r in records if r["used"]]
    assert len({r["prompt_id"] for r in used}) == len(used) == out["train/revised"] > 0
    assert out["train/skipped_revisions"] == sum(r["skip_reason"] is not None for r in records)
    assert ctx.counters["generated_tokens"] > 0 and ctx.counters["judge_calls"] == 0
    assert any("train/revised" in row for row in ctx.history)
    assert any(math.isfinite(row.get("train/loss", math.nan)) for row in ctx.history)

    after = weights(tmp_path / "out")
    assert any(not torch.equal(after[k], start[k]) for k in start)
    assert not (tmp_path / "out" / "trainer").exists()


class Scripted:
    """A deterministic stand-in for the policy's sampler, so the bookkeeping of bad revisions is checked
    exactly: per stage, per prompt id, the text to return."""

    def __init__(self, script: dict[int, dict[str, str]]):
        self.script, self.calls = script, []

    def __call__(self, chats, ids, max_new, stage):
        self.calls.append((stage, [c[-1]["content"] for c in chats]))
        return [self.script.get(stage, {}).get(i, f"{i}-stage{stage}") for i in ids]


def test_empty_and_unchanged_revisions_are_counted_not_used():
    criterion = Criterion(name="plain", description="Praise the film.")  # no principles: the description is one
    ctx = TrainContext(policy_path="", output_dir=None, seed=0, prompts=make_prompts(3), criterion=criterion)
    sample = Scripted({0: {"p0": "meh", "p1": "bad film", "p2": "ok"},
                       2: {"p0": "Revision:  a great film ", "p1": "  bad   film", "p2": "\n"}})
    records = ConstitutionalSFT().revise(ctx, sample)
    by_id = {r["prompt_id"]: r for r in records}
    assert by_id["p0"]["revision"] == "a great film" and by_id["p0"]["used"] and by_id["p0"]["skip_reason"] is None
    assert by_id["p1"]["skip_reason"] == "unchanged" and not by_id["p1"]["used"]
    assert by_id["p2"]["skip_reason"] == "empty" and not by_id["p2"]["used"]
    assert {r["principle"] for r in records} == {"Praise the film."}
    critique_requests = sample.calls[1][1]
    assert all("Praise the film." in c for c in critique_requests)


def test_later_rounds_revise_the_latest_usable_text():
    criterion = Criterion(name="c", description="d", wording={"principles": ["Be kind.", "Be brief."]})
    ctx = TrainContext(policy_path="", output_dir=None, seed=0, prompts=make_prompts(1), criterion=criterion)
    sample = Scripted({0: {"p0": "first"}, 1: {}, 2: {"p0": "second"}, 3: {}, 4: {"p0": "second"}})
    records = ConstitutionalSFT(num_revisions=2).revise(ctx, sample)
    assert [r["response"] for r in records] == ["first", "second"]
    assert [r["used"] for r in records] == [True, False] and records[1]["skip_reason"] == "unchanged"


def test_templates_need_a_principle_slot():
    with pytest.raises(ValueError, match=r"optimizer.critique_request: must contain \{principle\}"):
        ConstitutionalSFT(critique_request="Critique your answer.")
    with pytest.raises(ValueError, match="optimizer.num_revisions: 0 must be >= 1"):
        ConstitutionalSFT(num_revisions=0)


def test_criterion_without_principles_or_description_is_an_error():
    with pytest.raises(ValueError, match="neither principles nor a description"):
        ConstitutionalSFT.principle(Criterion(name="empty", description=""), 0, "p0", 0)


def test_clean_revision_strips_labels():
    assert clean_revision("  Revised response: Lovely film. ") == "Lovely film."
    assert clean_revision("Revision is key") == "Revision is key"


# our key -> the field of TRL's SFTConfig (the trainer's ``args``) it must arrive in
TRL_FIELDS = {"learning_rate": "learning_rate", "epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size",
              "grad_accum": "gradient_accumulation_steps", "max_length": "max_length",
              "lr_scheduler": "lr_scheduler_type", "warmup_ratio": "warmup_steps", "max_grad_norm": "max_grad_norm",
              "gradient_checkpointing": "gradient_checkpointing", "logging_steps": "logging_steps",
              "save_steps": "save_steps"}
# the revision stage's sampling settings (read from the optimizer while it samples)
SAMPLING = {"critique_request", "revision_request", "response_max_new_tokens", "critique_max_new_tokens",
            "revision_max_new_tokens", "temperature", "generation_batch_size"}
TEST_VALUES = dict(learning_rate=3e-3, epochs=2, batch_size=3, grad_accum=2, max_length=90, lr_scheduler="cosine",
                   warmup_ratio=0.25, max_grad_norm=0.7, gradient_checkpointing=True, logging_steps=2, save_steps=4,
                   mixed_precision="no", num_revisions=2, critique_max_new_tokens=6, generation_batch_size=4,
                   lora={"enabled": True, "r": 2, "alpha": 4, "target_modules": "all-linear"})


def test_config_keys_reach_the_trl_trainer(tiny_model, tmp_path, started_trainers):
    cfg = OmegaConf.to_container(OmegaConf.load(conf_dir() / "optimizer" / "cai_sft.yaml"))
    assert cfg["_target_"] == "rlaif.optimizers.ConstitutionalSFT" and cfg["name"] == ConstitutionalSFT.name
    handled = set(TRL_FIELDS) | SAMPLING | {"_target_", "name", "num_revisions", "dtype", "mixed_precision", "lora"}
    assert set(cfg) <= handled, f"no check says where optimizer.{set(cfg) - handled} goes"
    started = started_trainers
    values = {**cfg, **TEST_VALUES}
    opt = ConstitutionalSFT(**{k: v for k, v in values.items() if k != "_target_"})
    ctx = TrainContext(policy_path=tiny_model, output_dir=tmp_path / "out", seed=3, prompts=make_prompts(),
                       criterion=load_criterion("constitution"), max_new_tokens=8, checkpoint_dir=tmp_path / "ckpt")
    opt.train(ctx)

    (trainer,) = started
    for key, field in TRL_FIELDS.items():
        got = getattr(trainer.args, field)
        got = getattr(got, "value", got)  # enums by their name
        assert got == pytest.approx(values[key]) if isinstance(got, float) else got == values[key], \
            f"optimizer.{key}={values[key]!r} reached TRL as {field}={got!r}"
    assert not trainer.args.bf16 and not trainer.args.fp16  # mixed_precision: "no"
    assert hasattr(trainer.model, "peft_config")  # lora.enabled
    assert next(trainer.model.parameters()).dtype == torch.float32  # dtype: auto trains float32 weights
    records = read_jsonl(tmp_path / "out" / "revisions.jsonl")
    assert sorted({r["round"] for r in records}) == [0, 1] and len(records) == 2 * len(ctx.prompts)
    for key in SAMPLING:
        assert getattr(opt, key) == values[key], f"optimizer.{key} is not used"
    assert not opt.needs_reward and not opt.needs_pairs


def _cai_ctx(tiny_model, out, ckpt):
    return TrainContext(policy_path=tiny_model, output_dir=out, seed=3, prompts=make_prompts(),
                        criterion=load_criterion("constitution"), max_new_tokens=8, checkpoint_dir=ckpt)


_CAI = dict(learning_rate=1e-2, batch_size=1, critique_max_new_tokens=8, save_steps=1)


def test_cai_sft_killed_mid_training_resumes_to_the_same_weights(tiny_model, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    ckpt = tmp_path / "ckpt"
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from test_constitutional import _cai_ctx, _CAI\n"
              "from rlaif.optimizers.constitutional import ConstitutionalSFT\n"
              f"ConstitutionalSFT(**_CAI).train(_cai_ctx({tiny_model!r}, {str(tmp_path / 'killed')!r}, {str(ckpt)!r}))\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 120
    while time.time() < deadline and not list(ckpt.glob("checkpoint-*/rlaif_state.json")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert (ckpt / "revisions.jsonl").exists()  # sampled once, kept for the rerun

    resumed = _cai_ctx(tiny_model, tmp_path / "resumed", ckpt)
    ConstitutionalSFT(**_CAI).train(resumed)
    whole = _cai_ctx(tiny_model, tmp_path / "whole", tmp_path / "fresh-ckpt")
    ConstitutionalSFT(**_CAI).train(whole)
    assert read_jsonl(tmp_path / "resumed" / "revisions.jsonl") == read_jsonl(tmp_path / "whole" / "revisions.jsonl")
    assert resumed.counters["generated_tokens"] == whole.counters["generated_tokens"]
    a, b = weights(tmp_path / "resumed"), weights(tmp_path / "whole")
    assert all(torch.equal(a[k], b[k]) for k in b)
