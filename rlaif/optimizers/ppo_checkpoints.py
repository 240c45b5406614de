"""PPO checkpoints: everything a resume needs, written atomically, and read back.

A checkpoint is a folder ``ppo-iter-NNNNNN`` holding the trainable weights, the optimizer state,
the RNG states and ``state.json`` (written last: it marks the folder complete). It is written to
a temp folder and renamed into place, so a kill never leaves half a checkpoint that a rerun would
resume from.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from rlaif.optimizers.ppo_rollout import ActorCritic

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "ppo-iter-"


class PPOCheckpointMixin:
    """The checkpoint half of ``rlaif.optimizers.ppo._PPORun``.

    Reads the run's ``opt``, ``ctx``, ``acc``, ``ckpt_dir``, ``unwrapped``, ``optimizer``, ``kl_ctl``,
    ``moments``, ``spent`` and ``rows``, and ``_learning_rates``; ``_load_state`` sets ``spent``,
    ``rows`` and ``start_iteration``.
    """

    def _fingerprint(self) -> dict:
        opt = self.opt
        return {"value_model": opt.value_model, "lora": opt.lora if opt.lora.get("enabled") else None,
                "rollout_batch_size": opt.rollout_batch_size, "seed": self.ctx.seed}

    def _clear_partial_checkpoints(self) -> None:
        """Remove temp folders left by a process killed while writing (they were never renamed into place)."""
        if self.ckpt_dir is not None and self.ckpt_dir.exists() and self.acc.is_main_process:
            for tmp in self.ckpt_dir.glob(f".tmp-{CHECKPOINT_PREFIX}*"):
                shutil.rmtree(tmp, ignore_errors=True)

    def _latest_checkpoint(self) -> Path | None:
        if self.ckpt_dir is None or not self.ckpt_dir.exists():
            return None
        done = sorted(p for p in self.ckpt_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.json").exists())
        return done[-1] if done else None

    def _trainable_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in module.named_parameters() if p.requires_grad}

    def _save_checkpoint(self, iteration: int) -> None:
        """Write everything a resume needs into a temp folder, then rename it into place."""
        if self.ckpt_dir is None:
            return
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            from safetensors.torch import save_file

            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            final = self.ckpt_dir / f"{CHECKPOINT_PREFIX}{iteration:06d}"
            tmp = self.ckpt_dir / f".tmp-{final.name}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            m = self.unwrapped
            save_file(self._trainable_state(m.policy), str(tmp / "policy.safetensors"))
            value_state = {f"value_head.{k}": v for k, v in self._trainable_state(m.value_head).items()}
            if m.value_trunk is not None:
                value_state.update({f"value_trunk.{k}": v for k, v in self._trainable_state(m.value_trunk).items()})
            save_file(value_state, str(tmp / "value.safetensors"))
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(rng, tmp / "rng.pt")
            state = {"iteration": iteration, "kl_controller": self.kl_ctl.state_dict(),
                     "reward_norm": self.moments.state_dict(), "spent": self.spent, "history": self.rows,
                     "fingerprint": self._fingerprint(), "policy_path": str(self.ctx.policy_path)}
            (tmp / "state.json").write_text(json.dumps(state, indent=1))  # written last: marks the folder complete
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            done = sorted(self.ckpt_dir.glob(f"{CHECKPOINT_PREFIX}*"))
            for old in done[: -self.opt.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        self.last_saved = iteration

    def _load_weights(self, ckpt: Path, model: ActorCritic) -> dict:
        """Check the checkpoint fits this config and load its trainable weights (before prepare)."""
        from safetensors.torch import load_file

        state = json.loads((ckpt / "state.json").read_text())
        if state["fingerprint"] != self._fingerprint():
            raise ValueError(f"checkpoint {ckpt} was written with {state['fingerprint']}, but this run has "
                             f"{self._fingerprint()}: use another checkpoint folder or restore those settings")
        if state.get("policy_path") != str(self.ctx.policy_path):
            log.warning("resuming %s, written for policy %s, with policy %s", ckpt, state.get("policy_path"),
                        self.ctx.policy_path)
        for part, fname in ((model.policy, "policy.safetensors"), (model, "value.safetensors")):
            weights = load_file(str(ckpt / fname))
            missing, unexpected = part.load_state_dict(weights, strict=False)
            if unexpected:
                raise ValueError(f"checkpoint {ckpt / fname} has weights this model lacks: {unexpected[:5]}")
        return state

    def _load_state(self, ckpt: Path, state: dict) -> None:
        self.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=self.acc.device,
                                                  weights_only=True))
        for group, lr in zip(self.optimizer.param_groups, self._learning_rates(), strict=True):
            group["lr"] = lr  # the config's rates win over the saved ones (a rerun may change them)
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.moments.load_state_dict(state["reward_norm"])
        self.spent = {k: int(v) for k, v in state["spent"].items()}
        self.rows = list(state["history"])
        self.start_iteration = int(state["iteration"])
        rng = torch.load(ckpt / "rng.pt", weights_only=False)  # our own file; python's RNG state is a tuple
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        # The pipeline's counters started from 0 in this process: add what the earlier attempt spent
        # (global counts: on process 0 only, since the pipeline sums the counters over the processes).
        if self.acc.is_main_process:
            for key, value in self.spent.items():
                self.ctx.counters[key] = self.ctx.counters.get(key, 0) + value
        self.ctx.history.extend(self.rows)  # not re-sent to the tracker: it saw them the first time
        log.info("PPO resumes from %s after iteration %d", ckpt, self.start_iteration)
