"""One experiment run, top to bottom: prompts -> generate -> judge -> preferences ->
diagnostics / gate -> train -> evaluate -> summary. With ``preferences.source=data`` the pairs
are the dataset's own labelled pairs, and generate and judge do not run.

``run(cfg)`` is what the CLI, tests and sweepers call; it returns the summary metrics. Each step
is a stage under rlaif/stages/ that declares the inputs its output depends on; the runner
(rlaif/stages/runner.py) derives its cache key from them and handles the cache, journals and
resume, replay, multi-process launches, progress.json and timing. rlaif/session.py holds the
run folder, the run registry (resume the unfinished run of the same config), interrupts and the
summary.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlaif import precision
from rlaif.criteria import Criterion
from rlaif.diagnostics.gate import JudgeGateError, check_gate
from rlaif.io import write_json
from rlaif.journal import Journal
from rlaif.session import RecordedModel, Session, load_data_and_pairs, prepare
from rlaif.stages import (
    Diagnostics,
    Evaluate,
    EvaluateReference,
    Generate,
    Judge,
    Preferences,
    RunContext,
    Train,
    api_spend,
    labelling_cost,
    online_reward,
    run_stage,
)
from rlaif.stages.runner import link_atomic


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume, or replay) one experiment; return its summary metrics.

    ``output_dir``: the run folder (default: Hydra's). An unfinished run of the same config in
    the same folder is resumed; without ``output_dir``, an unfinished run of the same config in
    any folder is (``resume: auto``; see rlaif/session.py).
    """
    t_start = time.perf_counter()
    cfg, auto_dtypes = prepare(cfg, output_dir)  # validated, dtypes resolved: fails before any model loads
    prompts, data_pairs, data_stats = load_data_and_pairs(cfg)
    session = Session(cfg, output_dir, prompts)  # replay: records checked, nothing loaded
    with session.opened() as ctx:
        ctx.summary.update(data_stats)  # data/duplicates_dropped, data/truncated_prompts
        ctx.add(train_prompts=session.train_prompts, eval_prompts=[p for p in prompts if p.split == "eval"],
                data_pairs=data_pairs)
        _components(ctx, session)
        session.start_tracking({"policy": ctx.identity("policy"), "judge": ctx.identity("judge")}, auto_dtypes)
        flow(ctx)
    summary = {**ctx.summary, **ctx.times, "cache/hits": sum(ctx.hits.values()), **ctx.progress.counters(),
               **precision.summary(auto_dtypes, cfg.optimizer.get("mixed_precision"))}
    summary["time/total_s"] = round(time.perf_counter() - t_start, 2)
    return session.finish(summary)


def flow(ctx: RunContext) -> None:
    """The data flow: each stage reads the records of the ones before it from ``ctx``."""
    cfg = ctx.cfg
    judge_journals: list[Journal] = []  # the judge's API spend: labelling and probes
    if cfg.preferences.get("source", "judge") == "data":  # the dataset's own pairs: nothing sampled or judged
        ctx.add(candidates=[], judgments=[], verdicts=[], judge_members=[])
    else:
        run_stage(ctx, Generate())
        run_stage(ctx, Judge(judge_journals))
    run_stage(ctx, Preferences())
    if cfg.diagnostics.enabled:
        run_stage(ctx, Diagnostics(judge_journals))
    spend = api_spend(ctx.component("judge"), judge_journals)
    if spend:
        ctx.tracker.log(spend)
        ctx.summary.update(spend)
    gate(ctx)

    judge = ctx.component("judge")
    ctx.add(labelling=[labelling_cost(judge, ctx.records["candidates"], ctx.records["verdicts"])])
    optimizer = ctx.component("optimizer")
    counters: dict[str, float] = {"judge_calls": 0, "generated_tokens": 0}
    reward = online_reward(ctx, optimizer, counters) if optimizer.needs_reward else None
    trained = run_stage(ctx, Train(optimizer, reward, counters))
    ctx.set_model("trained", f"trained:{trained['key']}")
    ctx.paths["trained"] = trained["model"]
    link_atomic(trained["model"], ctx.out / "policy")

    # The reference's samples (shared by every optimizer's run), then the trained policy against them.
    run_stage(ctx, EvaluateReference(), timer="evaluate")
    run_stage(ctx, Evaluate(optimizer, reward), timer="evaluate")


def gate(ctx: RunContext) -> None:
    """``diagnostics.gate``: stop before training when the judge is not good enough to learn from."""
    failures = check_gate(OmegaConf.to_container(ctx.cfg.diagnostics.gate, resolve=True), ctx.summary)
    if failures:
        write_json(ctx.out / "gate_failed.json", {"failures": failures})
        raise JudgeGateError("The judge gate stopped the run before training:\n  - " + "\n  - ".join(failures)
                             + f"\nJudgments and diagnostics are in {ctx.out}.")


def _components(ctx: RunContext, session: Session) -> None:
    """The run's components (built from config, loading nothing yet) and its models' identities.

    A replay takes the candidates and judgments from the recorded run and keys every later stage
    by the recorded identities; no generator is built, and the policy's weights are looked up
    only if a stage that is not in the cache needs them."""
    cfg, rec, pool = ctx.cfg, session.recorded, ctx.pool
    criterion = Criterion.from_config(cfg.criteria)
    judge = instantiate(cfg.judge, _partial_=True)(criterion=criterion, pool=pool)
    ctx.set_component("criterion", criterion)
    ctx.set_component("judge", judge)
    ctx.set_component("gold", instantiate(cfg.data.gold) if cfg.data.get("gold") else None)
    ctx.set_component("optimizer", instantiate(cfg.optimizer))
    if rec is None:
        policy = pool.resolve(cfg.policy.model)
        generator = instantiate(cfg.generator)
        ctx.set_component("generator", generator)
        ctx.set_model("generator", lambda: generator.identity(pool))
        ctx.set_model("judge", judge.identity)
    else:
        policy = RecordedModel(pool, cfg.policy.model, rec.models.get("policy", ""))
        ctx.set_model("judge", rec.models.get("judge", ""))
        ctx.replayed = {"generate": {"candidates": rec.candidates},
                        "judge": {"judgments": rec.judgments, "verdicts": rec.verdicts,
                                  "judge_members": [{"name": n, "prefs": p} for n, p in rec.members.items()]}}
    ctx.set_component("policy", policy)
    ctx.set_model("policy", policy.identity)
