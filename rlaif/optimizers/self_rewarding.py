"""Iterative self-rewarding DPO (Yuan et al. 2024, arXiv:2401.10020).

Each round the current policy samples k responses per training prompt, judges them itself with a
pointwise rating prompt (the criterion's ``pointwise`` wording), pairs its best against its worst
response, and one DPO run from the current weights gives the next round's policy. The run's own
judge is not used for training (only for evaluation), so the policy and its judge improve together.

Rounds finished before a crash are kept under ``ctx.checkpoint_dir`` and skipped on rerun. With
``keep_rounds`` every round's policy but the last (which is the trained policy) is also saved beside
the trained policy, in ``<output_dir>/../rounds/round_<r>/``, for per-iteration evaluation
(rlaif/reproductions/self_rewarding.py).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import Field, field_validator, model_validator

from rlaif.io import write_json
from rlaif.optimizers.base import TrainContext
from rlaif.optimizers.dpo import DPOOptimizer, DPOOptions, DPORun, train_dpo
from rlaif.options import META, Count, Dtype, NonNegative, Options

log = logging.getLogger(__name__)


class SelfRewardingOptions(Options):
    """``optimizer=self_rewarding`` (conf/optimizer/self_rewarding.yaml; ``dpo`` is optimizer=dpo's)."""

    CONF: ClassVar[str] = "optimizer/self_rewarding"
    rounds: Count  # iterations M1 -> M2 -> ...
    num_candidates: Annotated[int, Field(ge=2)]
    min_margin: NonNegative
    judge_dtype: Dtype
    judge_batch_size: Count
    min_rating: Annotated[int, Field(ge=0, le=9)]  # the self-judge's rating scale (single digits)
    max_rating: Annotated[int, Field(ge=1, le=9)]
    keep_rounds: bool
    sample_batch_size: Count
    dpo: DPOOptions

    @model_validator(mode="after")
    def _scale(self):
        if self.min_rating >= self.max_rating:
            raise ValueError(f"min_rating ({self.min_rating}) must be < max_rating ({self.max_rating}): the self-judge "
                             "rates on single digits min_rating..max_rating")
        return self

    @field_validator("dpo", mode="before")
    @classmethod
    def _plain_dpo(cls, v):  # Hydra composes optimizer=dpo's whole file there, _target_ and name included
        return {k: x for k, x in v.items() if k not in META} if isinstance(v, dict) else v


class SelfRewardingDPO:
    name = "self_rewarding"
    needs_pairs = False
    needs_reward = False
    reads = ("criteria", "data.gold")  # run config it uses beyond its own (judges its own samples with the run's criterion; logs their gold)
    Options = SelfRewardingOptions

    def __init__(self, **options):
        if isinstance(options.get("dpo"), DPOOptimizer):  # an already built DPO optimizer
            options["dpo"] = options["dpo"].options.model_dump()
        self.options = o = SelfRewardingOptions.build(options)
        self.rounds, self.k = o.rounds, o.num_candidates
        self.judge_dtype, self.judge_batch_size = o.judge_dtype, o.judge_batch_size
        self.sample_batch_size, self.min_margin = o.sample_batch_size, o.min_margin
        self.dpo = DPOOptimizer(**o.dpo.model_dump())

    def train(self, ctx: TrainContext) -> dict[str, float]:
        if ctx.criterion is None:
            raise ValueError("self_rewarding needs the run's criterion (its pointwise wording is the self-judge prompt)")
        rounds_dir = Path(ctx.checkpoint_dir or Path(ctx.output_dir) / "rounds")
        current, steps, last = ctx.policy_path, 0, {}
        for r in range(1, self.rounds + 1):
            done = rounds_dir / f"round_{r}"
            if (done / "round.json").exists():  # finished before an interruption
                info = json.loads((done / "round.json").read_text())
                log.info("self_rewarding: round %d already done (%s)", r, done)
                current, steps, last = str(done / "model"), info["steps"], info["metrics"]
                ctx.history.extend(info["history"])
                continue
            seed = ctx.seed * 1000 + r
            pairs, row = self._label_round(ctx, r, current, seed)
            start = len(ctx.history)
            ctx.log(row, step=steps)
            tmp = rounds_dir / f".round_{r}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            last = train_dpo(self.dpo, ctx, DPORun(current, pairs, tmp / "model", step_offset=steps, seed=seed))
            last.update(row)
            steps = int(ctx.history[-1].get("train/step", steps)) if ctx.history else steps
            write_json(tmp / "round.json", {"steps": steps, "metrics": last, "history": ctx.history[start:]})
            shutil.rmtree(done, ignore_errors=True)
            tmp.rename(done)
            current = str(done / "model")
        out = Path(ctx.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for f in Path(current).iterdir():
            if f.is_file():
                shutil.copy2(f, out / f.name)
        if self.options.keep_rounds:
            for r in range(1, self.rounds):
                dest = out.parent / "rounds" / f"round_{r}"
                shutil.rmtree(dest, ignore_errors=True)
                shutil.copytree(rounds_dir / f"round_{r}" / "model", dest)
        return {**last, "train/rounds": self.rounds}

    def _label_round(self, ctx: TrainContext, r: int, current: str, seed: int) -> tuple[list, dict]:
        """Round ``r``'s preference pairs: the current policy samples, then rates its own samples."""
        from rlaif.generators import HFGenerator
        from rlaif.judges import PointwiseJudge
        from rlaif.models import ModelPool
        from rlaif.preferences import build_pairs

        name = f"self-rewarding-round-{r}"
        pool = ModelPool(trust_remote_code=ctx.trust_remote_code)
        pool.add(name, current, f"{name}:{current}")
        gen = HFGenerator(model=name, num_candidates=self.k, max_new_tokens=ctx.max_new_tokens,
                          temperature=ctx.temperature, top_p=ctx.top_p, batch_size=self.sample_batch_size,
                          dtype=self.judge_dtype)
        cands = gen.sample(pool, ctx.prompts, seed=seed, source=f"round{r}", desc=f"self-rewarding round {r}: sample")
        ctx.counters["generated_tokens"] += sum(c.num_tokens for c in cands)
        judge = PointwiseJudge(ctx.criterion, pool=pool, model=name, dtype=self.judge_dtype,
                               batch_size=self.judge_batch_size, seed=ctx.seed,
                               min_rating=self.options.min_rating, max_rating=self.options.max_rating)
        judgments, _ = judge.rank(ctx.prompts, cands)
        ctx.counters["judge_calls"] += len(cands)
        pairs, _ = build_pairs(ctx.prompts, cands, judgments, [], "best_vs_worst", self.min_margin)
        valid = [j.score for j in judgments if j.valid]
        row = {"train/round": r, "train/self_judge_score_mean": sum(valid) / max(len(valid), 1),
               "train/self_judge_invalid": len(judgments) - len(valid), "train/pairs": len(pairs),
               "train/sample_length": sum(c.num_tokens for c in cands) / max(len(cands), 1)}
        if ctx.gold is not None:
            row.update(_gold_row(ctx, cands, pairs))
        return pairs, row


def _gold_row(ctx: TrainContext, cands, pairs) -> dict[str, float]:
    """How good the policy's samples and its own labels are this round, by the task's gold labeller."""
    by_id = {p.id: p for p in ctx.prompts}
    g = dict(zip([(c.prompt_id, c.index) for c in cands],
                 ctx.gold.score([by_id[c.prompt_id] for c in cands], [c.text for c in cands]), strict=True))
    agree = [g[(p.prompt_id, p.chosen_index)] > g[(p.prompt_id, p.rejected_index)] for p in pairs
             if g[(p.prompt_id, p.chosen_index)] != g[(p.prompt_id, p.rejected_index)]]
    return {"train/sample_gold_mean": sum(g.values()) / max(len(g), 1),
            "train/self_judge_gold_agreement": sum(agree) / len(agree) if agree else float("nan")}
