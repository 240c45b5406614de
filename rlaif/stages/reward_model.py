"""Distilled RLAIF: a reward model trained on the judge's preference pairs, which then scores the
online optimizer's samples in the judge's place (``optimizer.reward_source=reward_model``)."""

from __future__ import annotations

import json
import logging

from omegaconf import OmegaConf

from rlaif.io import write_json
from rlaif.stages.base import Inputs, Stage

log = logging.getLogger(__name__)

# The starting policy: its location is read, its identity is the input.
POLICY = Inputs(config=("policy.model", "policy.trust_remote_code"),
                not_output=("policy.model", "policy.trust_remote_code"), models=("policy",))


class RewardModel(Stage):
    name = "reward_model"
    INPUTS = POLICY.plus(config=("reward_model", "seed"),
                         not_output=("reward_model.save_steps",),  # how often to checkpoint changes no weight
                         records=("preferences",))
    collective = True  # every process of a multi-process launch trains it together

    def build(self, v, work):
        from rlaif.optimizers.reward_model import RewardModelTrainer
        from rlaif.stages.train import announce_resume

        announce_resume(v, work, "reward_model", "reward-model training")
        rm = {k: x for k, x in OmegaConf.to_container(v.cfg.reward_model).items() if k != "_target_"}
        policy_path = v.component("policy").path

        def write(d):  # checkpoints go to the scratch folder, which outlives a kill
            trainer = RewardModelTrainer(**rm)
            m = trainer.train(policy_path, v.record("preferences"), d / "model", int(v.cfg.seed), v.tracker,
                              bool(v.cfg.policy.trust_remote_code), checkpoint_dir=work.scratch)
            write_json(d / "reward_model_metrics.json", m)
        return write

    def load(self, v, entry):
        return {"metrics": json.loads((entry / "reward_model_metrics.json").read_text()), "model": entry / "model"}

    def report(self, v, result):
        return dict(result["metrics"])


def reward_model_judge(ctx, result: dict):
    """The trained reward model as the judge an online optimizer calls."""
    from rlaif.judges.reward_model import RewardModelJudge

    rm = ctx.cfg.reward_model
    return RewardModelJudge(ctx.component("judge").criterion, model=str(result["model"]),
                            dtype=rm.get("judge_dtype", "float32"), batch_size=int(rm.get("judge_batch_size", 16)),
                            trust_remote_code=ctx.cfg.policy.trust_remote_code)
