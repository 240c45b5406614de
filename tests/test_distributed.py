"""Training on two processes (torchrun, gloo on CPU): the test that the code is really distributed.

Process 0 runs the experiment; process 1 reads the sampled and judged stages from the shared cache
and trains beside it. One run folder, one W&B run, no scratch left behind; the optimizer steps
show that each step saw both processes' batches, and the judge calls of both processes are counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlaif import distributed

BASE = ["data.num_train=8", "data.num_eval=3", "generator.num_candidates=3", "generator.max_new_tokens=8",
        "generator.dtype=float32", "judge.dtype=float32", "optimizer.learning_rate=1e-3",
        "optimizer.mixed_precision=no", "evaluation.samples_per_prompt=2", "diagnostics.probe_items=0"]


def launch(tmp_path: Path, model: str, overrides: list[str], nproc: int = 2) -> tuple[subprocess.CompletedProcess, Path]:
    work, scratch = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    scratch.mkdir()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TMPDIR": str(scratch),
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WANDB_SERVICE", None)
    env.pop("WANDB_API_KEY", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "rlaif", f"policy.model={model}", f"cache.dir={tmp_path / 'cache'}", *BASE, *overrides]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    return proc, work


def the_run(work: Path) -> Path:
    runs = [p for p in (work / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, f"expected one run folder, found {runs}"
    return runs[0]


def check_common(proc, work, tmp_path, model) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    run = the_run(work)
    summary = json.loads((run / "summary.json").read_text())
    assert proc.stdout.count("finished in") == 1  # one summary, printed by process 0
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # one W&B run
    assert not list((tmp_path / "tmp").glob("rlaif-rank*"))  # the other process's scratch run folder is gone
    assert json.loads((run / "manifest.json").read_text())["run"]["processes"] == 2
    before, after = load_file(str(Path(model) / "model.safetensors")), load_file(str(run / "policy" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before), "the policy did not change"
    return summary


def test_dpo_on_two_processes(tiny_model, tmp_path):
    proc, work = launch(tmp_path, tiny_model, ["optimizer.epochs=1", "optimizer.batch_size=2"])
    summary = check_common(proc, work, tmp_path, tiny_model)
    history = [json.loads(x) for x in (the_run(work) / "train_history.jsonl").read_text().splitlines()]
    # each optimizer step takes batch_size pairs on each of the 2 processes
    assert summary["preferences/pairs"] == 8 and max(r["train/step"] for r in history) == 8 / (2 * 2), history


def test_grpo_counts_every_processs_judge_calls(tiny_model, tmp_path):
    proc, work = launch(tmp_path, tiny_model, ["optimizer=grpo", "optimizer.num_generations=2",
                                               "optimizer.batch_size=2"])
    summary = check_common(proc, work, tmp_path, tiny_model)
    # 8 prompts x 2 generations, one epoch, split over the processes: all 16 scored, each counted once
    assert summary["train/judge_calls"] == 16 and summary["train/completions_scored"] == 16, summary
    assert 16 <= summary["train/generated_tokens"] <= 16 * 8, summary  # at most max_new_tokens each, counted once


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", [
    ["optimizer=ppo", "optimizer.total_episodes=16", "optimizer.rollout_batch_size=4", "optimizer.ppo_epochs=1",
     "optimizer.num_minibatches=1", "optimizer.forward_batch_size=4"],
    ["optimizer=online_dpo", "optimizer.batch_size=2"],
    ["optimizer=rloo", "optimizer.num_generations=2", "optimizer.batch_size=2", "optimizer.reward_source=reward_model",
     "reward_model.batch_size=2", "reward_model.eval_fraction=0"],
], ids=["ppo", "online_dpo", "rloo_distilled"])
def test_online_optimizers_on_two_processes(optimizer, tiny_model, tmp_path):
    proc, work = launch(tmp_path, tiny_model, optimizer)
    summary = check_common(proc, work, tmp_path, tiny_model)
    assert summary["train/judge_calls"] == 16, summary  # 16 samples in all, each scored once
    assert 16 <= summary["train/generated_tokens"] <= 16 * 8, summary  # at most max_new_tokens each, counted once


@pytest.mark.slow
def test_cai_sft_splits_its_revisions_between_the_processes(tiny_model, tmp_path):
    proc, work = launch(tmp_path, tiny_model, ["optimizer=cai_sft", "criteria=constitution", "optimizer.epochs=1",
                                               "optimizer.batch_size=2", "optimizer.critique_max_new_tokens=6"])
    summary = check_common(proc, work, tmp_path, tiny_model)
    # 8 prompts, each sampled once per stage (response, critique, revision) by one of the processes
    assert summary["train/revised"] + summary["train/unrevised_prompts"] == 8, summary
    assert 8 * 3 <= summary["train/generated_tokens"] <= 8 * (8 + 6 + 8), summary


def test_multi_process_config_errors(monkeypatch):
    from conftest import compose_config

    monkeypatch.setenv("WORLD_SIZE", "2")
    errors = distributed.check(compose_config(["cache.enabled=false", "optimizer=self_rewarding"]))
    assert any("cache.enabled=true" in e for e in errors) and any("self_rewarding" in e for e in errors)
    assert distributed.check(compose_config([])) == []
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.check(compose_config(["cache.enabled=false"])) == []


def test_multi_process_config_error_stops_the_launch_before_loading(tmp_path):
    proc, _ = launch(tmp_path, "/nonexistent/model", ["cache.enabled=false"])
    assert proc.returncode != 0
    assert "rlaif: Invalid config for a multi-process launch" in proc.stderr and "cache.enabled=true" in proc.stderr
    assert "Traceback" not in proc.stderr.split("rlaif: Invalid config")[0]  # a message, not a crash


@pytest.mark.parametrize(("name", "kind"), [("multi_gpu", "MULTI_GPU"), ("deepspeed_zero2", "DEEPSPEED"),
                                            ("fsdp", "FSDP")])
def test_shipped_accelerate_configs_load(name, kind):
    """The accelerate configs in conf/accelerate parse as accelerate itself reads them (they need GPUs to run)."""
    from accelerate.commands.config.config_args import load_config_from_file

    from rlaif.config import conf_dir

    cfg = load_config_from_file(str(conf_dir() / "accelerate" / f"{name}.yaml"))
    assert cfg.distributed_type.name == kind and cfg.num_processes >= 2 and not cfg.use_cpu


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", [
    ["optimizer.epochs=30", "optimizer.batch_size=1"],  # 120 steps
    ["optimizer=grpo", "optimizer.num_generations=2", "optimizer.batch_size=2", "optimizer.epochs=20"],  # 80 steps
], ids=["dpo", "grpo"])
def test_two_process_training_killed_and_resumed_matches_uninterrupted(optimizer, tiny_model, tmp_path):
    """kill -9 of the whole launch mid-training; the same command resumes from the shared checkpoint
    and ends with the weights and summary (judge calls and tokens counted once) of an uninterrupted
    two-process run."""
    import signal
    import time

    over = [*optimizer, "optimizer.save_steps=1", "tracker=none"]
    (tmp_path / "ref").mkdir()
    ref, ref_work = launch(tmp_path / "ref", tiny_model, over)
    assert ref.returncode == 0, ref.stderr[-4000:]

    root = tmp_path / "killed"
    root.mkdir()
    (root / "work").mkdir()
    (root / "tmp").mkdir()
    env = {**os.environ, "WANDB_MODE": "offline", "TMPDIR": str(root / "tmp"), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WANDB_SERVICE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rlaif",
           f"policy.model={tiny_model}", f"cache.dir={root / 'cache'}", *BASE, *over]
    proc = subprocess.Popen(cmd, cwd=root / "work", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300

    def steps() -> list[int]:
        return [int(p.parent.name.split("-")[1]) for p in (root / "cache").glob("checkpoints/train/*/checkpoint-*/rlaif_state.json")]

    while time.time() < deadline and max(steps(), default=0) < 3 and proc.poll() is None:
        time.sleep(0.01)
    # the launcher and its workers (torchrun starts each worker in a session of its own), as a lost node
    import psutil

    for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        p.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and max(steps()) >= 3, "the launch ended before it could be killed"
    assert not list((root / "cache").glob("stages/train/*/COMPLETE")), "training had finished before the kill"

    again = subprocess.run(cmd, cwd=root / "work", env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "training resumes from" in again.stdout
    a, b = the_run(ref_work), the_run(root / "work")
    wa, wb = load_file(str(a / "policy" / "model.safetensors")), load_file(str(b / "policy" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (json.loads((x / "summary.json").read_text()) for x in (a, b))
    skip = ("time/", "resume/", "cache/")
    assert {k: v for k, v in sa.items() if not k.startswith(skip) and "runtime" not in k and "per_second" not in k} == \
           {k: v for k, v in sb.items() if not k.startswith(skip) and "runtime" not in k and "per_second" not in k}
