"""Checkpoints for everything trained with transformers' Trainer (DPO, GRPO, RLOO, online DPO, CAI SFT,
the distilled reward model).

Every ``optimizer.save_steps`` optimizer steps the Trainer writes ``checkpoint-<step>/`` into
``ctx.checkpoint_dir`` (weights or LoRA adapters, optimizer, scheduler, RNG states, trainer
state, data position); a rerun of the same stage calls ``trainer.train(resume_from_checkpoint=...)``
with the newest complete one, so the run goes on from there and ends with the weights an
uninterrupted run would have (checked in tests/test_resume.py).

The Trainer writes a checkpoint folder in place, not atomically. ``TrainerResume`` therefore
adds ``rlaif_state.json`` *after* the Trainer is done with the folder (``on_save``), written
atomically, and only folders holding it count as complete; others are leftovers of a kill and
are deleted. The file also holds what lives outside the Trainer and would otherwise be lost:

* the history rows already logged (``ctx.history``) and the last logged metrics;
* the pipeline's counters (``ctx.counters``: judge calls, generated tokens, unscorable rewards)
  and the reward wrapper's own counts, so the run's spend adds up as in one process;
* the running sum of the per-step losses: the Trainer restarts it at 0 on resume and reports a
  ``train_loss`` over the resumed steps only, so ``train/train_loss`` is recomputed here over all
  steps (identically with or without a resume).

This module must not change what a run computes: no extra RNG draws, nothing that depends on
whether the process was restarted.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rlaif import distributed

log = logging.getLogger(__name__)

MARKER = "rlaif_state.json"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_args(save_steps: int | None, checkpoint_dir: Path | None, output_dir: Path,
                    logging_steps: int = 1) -> dict[str, Any]:
    """TrainingArguments for saving: into ``checkpoint_dir`` every ``save_steps`` optimizer steps.

    ``save_steps`` is rounded up to a multiple of ``logging_steps``: the Trainer's loss since the
    last logged step is not in a checkpoint, so a resume between two logged steps would log a
    different mean loss at the next one.
    """
    if not save_steps or checkpoint_dir is None:
        return {"output_dir": str(output_dir / "trainer"), "save_strategy": "no"}
    every = int(save_steps)
    if logging_steps and every % int(logging_steps):
        every = (every // int(logging_steps) + 1) * int(logging_steps)
        log.info("optimizer.save_steps rounded up to %d, a multiple of logging_steps=%d", every, logging_steps)
    return {"output_dir": str(checkpoint_dir), "save_strategy": "steps", "save_steps": every,
            "save_total_limit": None, "save_only_model": False}


def complete_checkpoints(checkpoint_dir: Path | None, clean: bool = True) -> list[Path]:
    """Complete ``checkpoint-<step>`` folders, oldest first; with ``clean``, delete incomplete ones."""
    if checkpoint_dir is None or not Path(checkpoint_dir).exists():
        return []
    done = []
    for p in Path(checkpoint_dir).iterdir():
        m = _CKPT.match(p.name)
        if not m or not p.is_dir():
            continue
        if (p / MARKER).exists():
            done.append((int(m.group(1)), p))
        elif clean:
            log.info("removing the incomplete checkpoint %s (its run was interrupted while writing it)", p)
            shutil.rmtree(p, ignore_errors=True)
    return [p for _, p in sorted(done)]


def latest_checkpoint(checkpoint_dir: Path | None) -> Path | None:
    done = complete_checkpoints(checkpoint_dir)
    return done[-1] if done else None


# Counters some TRL trainers keep on the trainer object rather than in its checkpointed state
# (DPOTrainer's running ``num_tokens``): saved beside the checkpoint and put back on resume.
TRAINER_COUNTERS = ("_total_train_tokens",)


class TrainerResume(TrainerCallback):
    """Completes checkpoints (see the module docstring) and, when ``ctx.checkpoint_dir`` holds
    one, restores the state kept beside it.

    Use: build it before the trainer, pass it in ``callbacks`` *before* the callback that
    forwards logs, call ``attach(trainer)``, then ``trainer.train(resume_from_checkpoint=
    resume.checkpoint)``.
    """

    def __init__(self, ctx, last: dict[str, float], reward=None, keep: int = 1):
        self.ctx, self.last, self.reward, self.keep = ctx, last, reward, keep
        self.trainer = None
        self.loss_total, self.last_logged = 0.0, 0
        self.checkpoint = latest_checkpoint(ctx.checkpoint_dir)
        self.state: dict[str, Any] = {}
        if self.checkpoint is not None:
            self.state = json.loads((self.checkpoint / MARKER).read_text())
            ctx.history[:] = self.state["history"]
            last.clear()
            last.update(self.state["last"])
            # Counts are totals over the processes of a multi-process launch: process 0 takes them
            # back, the others start from 0 (the pipeline sums the counts of all processes).
            main = distributed.is_main()
            ctx.counters.clear()
            ctx.counters.update({k: (v if main else 0) for k, v in self.state["counters"].items()})
            self.loss_total, self.last_logged = float(self.state["loss_total"]), int(self.state["last_logged"])
            for k, v in (self.state.get("reward") or {}).items():
                if reward is not None and hasattr(reward, k):
                    setattr(reward, k, v if main else 0)
            log.info("resuming training from %s (step %d)", self.checkpoint, self.state["global_step"])

    @property
    def resume_from(self) -> str | None:
        return str(self.checkpoint) if self.checkpoint is not None else None

    def attach(self, trainer) -> None:
        self.trainer = trainer
        for k, v in (self.state.get("trainer") or {}).items():
            if hasattr(trainer, k):
                setattr(trainer, k, v)

    # -- running loss, so train_loss covers every step whether or not the run was resumed
    def on_log(self, args, state, control, logs=None, **kw):
        if logs is None:
            return
        if isinstance(logs.get("loss"), (int, float)):
            self.loss_total += float(logs["loss"]) * max(state.global_step - self.last_logged, 1)
            self.last_logged = state.global_step
        if "train_loss" in logs and state.global_step > 0:
            logs["train_loss"] = self.loss_total / state.global_step

    def on_save(self, args, state, control, **kw):
        from rlaif.io import write_json

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        # every process calls this (it sums the counts over the processes); process 0 completes the folder
        counters = distributed.sum_counters(dict(self.ctx.counters))
        reward_counts = distributed.sum_counters(_reward_counts(self.reward))
        if not folder.is_dir() or not state.is_world_process_zero:
            return
        payload = {"global_step": state.global_step, "history": self.ctx.history, "last": self.last,
                   "counters": counters, "loss_total": self.loss_total,
                   "last_logged": self.last_logged, "reward": reward_counts,
                   "trainer": {k: getattr(self.trainer, k) for k in TRAINER_COUNTERS
                               if self.trainer is not None and hasattr(self.trainer, k)}}
        write_json(folder / MARKER, payload)  # atomic: the folder counts as complete from here on
        for old in complete_checkpoints(Path(args.output_dir))[:-max(self.keep, 1)]:
            shutil.rmtree(old, ignore_errors=True)


def _reward_counts(reward) -> dict[str, Any]:
    if reward is None:
        return {}
    return {k: getattr(reward, k) for k in ("completions", "unscorable", "unscorable_pairs") if hasattr(reward, k)}
