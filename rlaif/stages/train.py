"""Stage 5: train a fresh copy of the policy with the configured optimizer (the judge's weights
never change). Training checkpoints into the stage's scratch folder and resumes from the newest
checkpoint after a kill."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from rlaif import distributed
from rlaif.io import write_json
from rlaif.optimizers.base import Budget, TrainContext
from rlaif.stages.base import Stage
from rlaif.stages.judge import JUDGE
from rlaif.stages.reward_model import POLICY

log = logging.getLogger(__name__)

# The HF trainers' wall-clock figures differ between identical runs, so they stay out of the summary
# (time/train_s has the training time; train_history.jsonl keeps them).
TRAINER_CLOCK = ("_runtime", "_per_second", "step_time")


class Train(Stage):
    name = "train"
    collective = True  # every process of a multi-process launch trains together
    log_metrics = False  # the optimizer logs its own rows, step by step

    def __init__(self, optimizer, reward=None, counters: dict[str, float] | None = None):
        self.optimizer, self.reward = optimizer, reward  # reward: what an online optimizer calls (online_reward)
        self.counters = counters if counters is not None else {"judge_calls": 0, "generated_tokens": 0}

    def inputs(self, cfg):
        opt = self.optimizer
        inputs = POLICY.plus(config=("optimizer", "seed", "budget", "generator.max_new_tokens",
                                     "generator.temperature", "generator.top_p", *getattr(opt, "reads", ())),
                             not_output=("optimizer.save_steps",),  # how often to checkpoint changes no weight
                             records=("train_prompts", "labelling"))
        if opt.needs_pairs:
            inputs = inputs.plus(records=("preferences",))
        if opt.needs_reward and cfg.optimizer.get("reward_source", "judge") == "reward_model":
            inputs = inputs.plus(models=("reward_model",))
        elif opt.needs_reward:  # the judge itself is the reward (comparative judges: against sample 0)
            inputs = inputs.merge(JUDGE).plus(records=("candidates",))
        return inputs

    def build(self, v, work):
        announce_resume(v, work, "train", "training")
        counters = self.counters  # the reward counts its calls here too
        declared = v.inputs.config
        ctx = TrainContext(policy_path=v.component("policy").path, output_dir=Path(), seed=int(v.cfg.seed),
                           prompts=v.record("train_prompts"),
                           pairs=v.record("preferences") if self.optimizer.needs_pairs else [],
                           reward=self.reward, criterion=v.component("criterion") if "criteria" in declared else None,
                           gold=v.component("gold") if "data.gold" in declared else None, tracker=v.tracker,
                           trust_remote_code=bool(v.cfg.policy.trust_remote_code), checkpoint_dir=work.scratch,
                           max_new_tokens=int(v.cfg.generator.max_new_tokens),
                           temperature=float(v.cfg.generator.temperature), top_p=float(v.cfg.generator.top_p),
                           budget=budget(v.cfg, v.record("labelling")[0]), counters=counters)
        offline = v.record("labelling")[0] if self.optimizer.needs_pairs else {}

        def write(d: Path):  # trains into the entry's temp folder, checkpointing in the scratch folder
            ctx.output_dir = d / "model"
            last = self.optimizer.train(ctx)
            counters.update(distributed.sum_counters(counters))  # every process's judge calls and tokens
            last = {**last, **distributed.sum_counters({k: x for k, x in last.items()
                                                        if k in distributed.PER_PROCESS_METRICS})}
            shutil.rmtree(d / "model" / "trainer", ignore_errors=True)
            spent = {k: offline.get(k, 0) + counters.get(k, 0) for k in ("judge_calls", "generated_tokens")}
            last = {**last, "train/judge_calls": spent["judge_calls"],
                    "train/generated_tokens": spent["generated_tokens"],
                    "train/unscorable_rewards": counters.get("unscorable", 0)}
            write_json(d / "train_metrics.json", last)
            ctx.write_history(d / "train_history.jsonl")
        return write

    def load(self, v, entry):
        from rlaif.stages.runner import copy_atomic

        copy_atomic(entry / "train_history.jsonl", v.out / "train_history.jsonl")
        return {"model": entry / "model", "metrics": json.loads((entry / "train_metrics.json").read_text())}

    def report(self, v, result):
        return {f"train/{k.removeprefix('train/')}": x for k, x in result["metrics"].items()
                if not k.removeprefix("train/").endswith(TRAINER_CLOCK)}


def online_reward(ctx, optimizer, counters: dict[str, float]):
    """The reward an online optimizer calls: the judge itself (direct RLAIF) or a reward model trained
    on the judge's preference pairs (distilled RLAIF; runs the reward-model stage)."""
    from rlaif.optimizers.base import JudgeReward
    from rlaif.stages.reward_model import RewardModel, reward_model_judge
    from rlaif.stages.runner import link_atomic, run_stage

    judge = ctx.component("judge")
    if ctx.cfg.optimizer.get("reward_source", "judge") == "reward_model":
        result = run_stage(ctx, RewardModel())
        ctx.set_model("reward_model", f"reward_model:{result['key']}")
        if ctx.main:  # beside the run's `policy` link: what scored its training (studies read it)
            link_atomic(result["model"], ctx.out / "reward_model")
        return JudgeReward(reward_model_judge(ctx, result), counters=counters)
    refs = None
    if not judge.pointwise:  # validated: optimizer.reward_reference is reference_policy
        refs = {c.prompt_id: c.text for c in sorted(ctx.records["candidates"], key=lambda c: -c.index)}  # sample 0
    return JudgeReward(judge, refs, counters)


def labelling_cost(judge, candidates, verdicts) -> dict[str, int]:
    """What labelling the offline preference data spent (``budget.*: offline`` matches it)."""
    return {"judge_calls": len(candidates) if judge.pointwise else sum(2 if x.swapped else 1 for x in verdicts),
            "generated_tokens": sum(c.num_tokens for c in candidates)}


def budget(cfg, offline: dict) -> Budget:
    """``budget.*``: null = each optimizer's own settings; ``offline`` = what labelling the offline
    preference data spent (so online methods get the same number of judge calls or tokens as DPO)."""
    b = cfg.get("budget") or {}
    vals = {}
    for k in ("judge_calls", "generated_tokens"):
        x = b.get(k)
        vals[k] = offline[k] if x == "offline" else (int(x) if x is not None else None)
    return Budget(**vals)


def announce_resume(v, work, stage: str, what: str) -> None:
    where, step = resume_point(work.scratch)
    if where is not None:
        log.info("%s: resuming from %s", stage, where)
        if v.ctx.main:
            print(f"rlaif: {what} resumes from {where}", flush=True)
    v.ctx.progress.set(**{stage: {"resumed_from": where, "resumed_step": step}})


def resume_point(scratch: Path) -> tuple[str | None, int | None]:
    """The checkpoint a training stage will resume from (TRL trainers, PPO, self-rewarding rounds)."""
    from rlaif.optimizers.checkpoints import complete_checkpoints

    done = complete_checkpoints(scratch / "trainer", clean=False) or complete_checkpoints(scratch, clean=False)
    if done:
        return str(done[-1]), int(done[-1].name.rsplit("-", 1)[1])
    for pattern, marker, sep in (("ppo-iter-*", "state.json", "-"), ("round_*", "round.json", "_")):
        found = sorted(p for p in scratch.glob(pattern) if (p / marker).exists()) if scratch.exists() else []
        if found:
            return str(found[-1]), int(found[-1].name.rsplit(sep, 1)[1])
    return None, None
