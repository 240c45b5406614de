"""One experiment run, top to bottom: prompts -> candidates -> judgments -> preferences ->
trained policy -> evaluation, with every stage's records in the run folder and the cache.

``run(cfg)`` is what the CLI, tests and sweepers call; it returns the summary metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlaif.cache import StageCache, stable_hash
from rlaif.config import validate
from rlaif.criteria import Criterion
from rlaif.data import load_prompts
from rlaif.diagnostics import (
    compute_diagnostics,
    diagnostics_plot,
    injection_probe,
    inter_judge_agreement,
    swap_probe,
    verbosity_probe,
)
from rlaif.diagnostics.gate import JudgeGateError, check_gate
from rlaif.evaluation import evaluate
from rlaif.generators import HFGenerator
from rlaif.io import read_jsonl, read_records, write_json, write_records
from rlaif.manifest import build_manifest
from rlaif.models import ModelPool
from rlaif.preferences import build_pairs
from rlaif.tracking import redact
from rlaif.types import Candidate, EvalSample, Judgment, PairwiseVerdict, PreferencePair, Prompt

log = logging.getLogger(__name__)


class Run:
    """State shared by the stages of one run: folders, cache, models, tracker, timings."""

    def __init__(self, cfg: DictConfig, out: Path):
        self.cfg, self.out = cfg, out
        self.cache = StageCache(cfg.cache.dir, cfg.cache.enabled)
        self.pool = ModelPool(cfg.cache.dir, cfg.policy.prefer_hub, cfg.policy.trust_remote_code)
        self.times: dict[str, float] = {}
        self.hits: dict[str, bool] = {}
        self.extra: dict[str, Any] = {}  # metrics of optional stages (e.g. reward-model training)
        self.tracker = instantiate(cfg.tracker)
        sweep = _hydra_sweep()
        if sweep is not None:  # one W&B group per sweep, one job type per optimizer
            if getattr(self.tracker, "group", "absent") is None:
                self.tracker.group = sweep
            if getattr(self.tracker, "job_type", "absent") is None:
                self.tracker.job_type = str(cfg.optimizer.name)

    @contextlib.contextmanager
    def timed(self, stage: str):
        t = time.perf_counter()
        yield
        self.times[f"time/{stage}_s"] = round(time.perf_counter() - t, 2)

    def records_stage(self, stage: str, inputs: dict, compute: Callable[[], dict[str, list]],
                      types: dict[str, type]) -> dict[str, list]:
        """Run or reuse a stage whose outputs are record lists; copy them into the run folder."""
        key = self.cache.key(stage, inputs)
        hit = self.cache.get(stage, key)
        self.hits[stage] = hit is not None
        if hit is None:
            results = compute()
            hit = self.cache.put(stage, key, lambda d: [write_records(d / f"{n}.jsonl", rs) for n, rs in results.items()])
        else:
            log.info("%s: reusing cached results (%s)", stage, hit)
        out = {}
        for name, cls in types.items():
            src = hit / f"{name}.jsonl"
            shutil.copyfile(src, self.out / f"{name}.jsonl")
            out[name] = read_records(src, cls) if cls is not dict else read_jsonl(src)
        return out


def _finite_or_none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _prompt_hash(prompts: list[Prompt]) -> str:
    return stable_hash([p.to_dict() for p in prompts])


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    t_start = time.perf_counter()
    validate(cfg)
    out = Path(output_dir) if output_dir else _hydra_output_dir()
    out.mkdir(parents=True, exist_ok=True)
    name = cfg.name or _hydra_choice("experiment") or "rlaif"
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    (out / "resolved_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))

    r = Run(cfg, out)
    seed = int(cfg.seed)

    # Data and model resolution first: both fail fast, before any model loads.
    d = cfg.data
    prompts = load_prompts(d.path, d.template, d.system, d.num_train, d.num_eval, d.split_seed, d.text_field)
    write_records(out / "prompts.jsonl", prompts)
    train_prompts = [p for p in prompts if p.split == "train"]
    eval_prompts = [p for p in prompts if p.split == "eval"]
    policy = r.pool.resolve(cfg.policy.model)
    criterion = Criterion.from_config(cfg.criteria)
    judge = instantiate(cfg.judge, _partial_=True)(criterion=criterion, pool=r.pool)  # loads nothing yet
    judge_identity = judge.identity
    gold = instantiate(cfg.data.gold) if cfg.data.get("gold") else None

    manifest = build_manifest(resolved, {"policy": policy.identity, "judge": judge_identity},
                              redact(OmegaConf.to_container(cfg.criteria, resolve=True)), seed)
    write_json(out / "manifest.json", manifest)
    r.tracker.start(out, {**resolved, "manifest": {k: v for k, v in manifest.items() if k != "config"}}, name)
    try:
        summary = _stages(r, cfg, seed, train_prompts, eval_prompts, policy, judge, judge_identity, criterion, gold)
    except BaseException:
        r.tracker.finish()
        raise
    summary["time/total_s"] = round(time.perf_counter() - t_start, 2)
    summary = {k: _finite_or_none(v) for k, v in summary.items()}
    write_json(out / "summary.json", summary)
    r.tracker.summary(summary)
    location = r.tracker.location
    r.tracker.finish()
    print(format_summary(name, summary, out, location, r.hits))
    return summary


def _stages(r: Run, cfg, seed, train_prompts, eval_prompts, policy, judge, judge_identity, criterion, gold) -> dict:
    out, pool = r.out, r.pool
    generator = instantiate(cfg.generator)
    gen_inputs = {"model": generator.identity(pool), "sampling": generator.sampling_params(), "seed": seed,
                  "prompts": _prompt_hash(train_prompts), "k": generator.num_candidates}

    # 1. Sample k candidates per training prompt.
    with r.timed("generate"):
        res = r.records_stage("generate", gen_inputs, lambda: {"candidates": generator.sample(
            pool, train_prompts, seed=seed, desc="generate candidates")}, {"candidates": Candidate})
    candidates = res["candidates"]
    if getattr(generator, "failures", 0):
        log.warning("generate: %d requests failed after retries; those candidates are missing", generator.failures)
    gen_acct = generator.accounting() if hasattr(generator, "accounting") else {}
    gen_metrics = {**{f"generate/api_{k}": v for k, v in gen_acct.items()},
                   "generate/candidates": len(candidates),
                   "generate/mean_tokens": sum(c.num_tokens for c in candidates) / max(len(candidates), 1),
                   "generate/finished_rate": sum(c.finished for c in candidates) / max(len(candidates), 1)}
    r.tracker.log(gen_metrics)

    # 2. Judge them under the criterion (frozen judge; may share the policy's loaded weights).
    judge_inputs = {"judge": OmegaConf.to_container(cfg.judge, resolve=True), "judge_model": judge_identity,
                    "criterion": OmegaConf.to_container(cfg.criteria, resolve=True),
                    "candidates": stable_hash([c.to_dict() for c in candidates]), "prompts": _prompt_hash(train_prompts)}
    with r.timed("judge"):
        def _judge():
            judgments, verdicts = judge.rank(train_prompts, candidates)
            return {"judgments": judgments, "verdicts": verdicts}
        res = r.records_stage("judge", judge_inputs, _judge, {"judgments": Judgment, "verdicts": PairwiseVerdict})
    judgments, verdicts = res["judgments"], res["verdicts"]

    # 3. Preference pairs (invalid judgments never enter a pair; they are counted).
    with r.timed("preferences"):
        pairs, pstats = build_pairs(train_prompts, candidates, judgments, verdicts, cfg.preferences.mode,
                                    cfg.preferences.min_margin)
        write_records(out / "preferences.jsonl", pairs)
    metrics: dict[str, Any] = {f"preferences/{k}": v for k, v in pstats.items()}
    valid_scores = [j.score for j in judgments if j.valid]
    metrics["judge/invalid"] = len(judgments) - len(valid_scores)
    metrics["judge/score_mean"] = sum(valid_scores) / len(valid_scores) if valid_scores else float("nan")
    by_prompt = {p.id: p for p in train_prompts}
    g: dict = {}
    if gold is not None:
        g = dict(zip([(c.prompt_id, c.index) for c in candidates],
                     gold.score([by_prompt[c.prompt_id] for c in candidates], [c.text for c in candidates]),
                     strict=True))
        agree = [g[(p.prompt_id, p.chosen_index)] > g[(p.prompt_id, p.rejected_index)] for p in pairs
                 if g[(p.prompt_id, p.chosen_index)] != g[(p.prompt_id, p.rejected_index)]]
        metrics["judge/pair_agreement_with_gold"] = sum(agree) / len(agree) if agree else float("nan")
        metrics["generate/gold_mean"] = sum(g.values()) / len(g) if g else float("nan")
        jscore = {(j.prompt_id, j.index): j.score for j in judgments}
        rows = [[by_prompt[c.prompt_id].text, c.text, jscore.get((c.prompt_id, c.index)), g[(c.prompt_id, c.index)]]
                for c in candidates[: int(cfg.evaluation.table_rows)]]
        r.tracker.table("generate/samples", ["prompt", "response", "judge_score", "gold"], rows)
    if cfg.diagnostics.enabled:
        with r.timed("diagnostics"):
            def _diagnose():
                swapped = [v for v in verdicts if v.swapped]  # only pairs judged in both orders show position bias
                d = compute_diagnostics(train_prompts, candidates, judgments, swapped, g or None, judge_identity,
                                        policy.identity)
                members = getattr(judge, "last_member_prefs", None) or {}
                if len(members) >= 2:  # a panel just ranked the candidates: how far do its members agree?
                    ija = inter_judge_agreement(members)
                    d.update({f"judge/panel_{k}": v for k, v in ija.items() if k in ("mean_agreement", "mean_cohen_kappa")})
                if int(cfg.diagnostics.probe_items) > 0 and pairs:  # probes call the judge: cached with the rest
                    d.update(run_probes(judge, train_prompts, pairs, int(cfg.diagnostics.probe_items)))
                return {"diagnostics": [d]}
            diag_inputs = {**judge_inputs, "policy": policy.identity, "gold": stable_hash(sorted([list(k), v] for k, v in g.items())),
                           "pairs": stable_hash([p.to_dict() for p in pairs]),
                           "probe_items": int(cfg.diagnostics.probe_items)}
            diag = r.records_stage("diagnostics", diag_inputs, _diagnose, {"diagnostics": dict})["diagnostics"][0]
            write_json(out / "diagnostics.json", diag)
            r.tracker.table("judge/diagnostics_table", ["metric", "value"], [[k, v] for k, v in sorted(diag.items())])
            if verdicts:
                r.tracker.table("judge/verdicts", ["prompt_id", "a", "b", "p_a_first", "p_a_second"],
                                [[v.prompt_id, v.a, v.b, v.p_a_first, v.p_a_second]
                                 for v in verdicts[: int(cfg.evaluation.table_rows)]])
            metrics.update(diag)
            if cfg.diagnostics.plot:
                png = diagnostics_plot(candidates, judgments, verdicts, out / "diagnostics.png",
                                       title=f"{judge.name} / {criterion.name}")
                r.tracker.image("judge/diagnostics", png)
    backend = getattr(judge, "backend", None)
    if backend is not None and hasattr(backend, "accounting"):
        metrics.update({f"judge/api_{k}": v for k, v in backend.accounting().items()})
    r.tracker.log(metrics)
    failures = check_gate(OmegaConf.to_container(cfg.diagnostics.gate, resolve=True), metrics)
    if failures:
        write_json(out / "gate_failed.json", {"failures": failures})
        raise JudgeGateError("The judge gate stopped the run before training:\n  - " + "\n  - ".join(failures)
                             + f"\nJudgments and diagnostics are in {out}.")

    # 4. Train the policy (a fresh copy: the judge's weights never change).
    offline_budget = {"judge_calls": len(candidates) if judge.pointwise else
                      sum(2 if v.swapped else 1 for v in verdicts),
                      "generated_tokens": sum(c.num_tokens for c in candidates)}
    with r.timed("train"):
        optimizer, reward, policy_dir, trained_id, train_metrics = _train_stage(
            r, cfg, seed, train_prompts, candidates, pairs, policy, judge, judge_inputs, criterion, gold,
            offline_budget)
    link = out / "policy"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(policy_dir, link)

    # 5. Evaluate trained policy vs reference on held-out prompts with the same frozen judge.
    with r.timed("evaluate"):
        eval_metrics, samples = _evaluate_stage(r, cfg, seed, eval_prompts, policy, policy_dir, trained_id,
                                                optimizer, reward, judge, judge_inputs, judge_identity, criterion,
                                                gold)
    r.tracker.log(eval_metrics)
    ev = cfg.evaluation
    pol = {(s.prompt_id, s.index): s for s in samples if s.source == "policy"}
    text = {p.id: p.text for p in eval_prompts}
    rows = [[text[s.prompt_id], pol[(s.prompt_id, s.index)].text, s.text, pol[(s.prompt_id, s.index)].gold, s.gold]
            for s in samples if s.source == "reference" and (s.prompt_id, s.index) in pol][: int(ev.table_rows)]
    r.tracker.table("eval/samples", ["prompt", "policy", "reference", "gold_policy", "gold_reference"], rows)

    summary = {**gen_metrics, **metrics, **{f"train/{k.removeprefix('train/')}": v for k, v in train_metrics.items()},
               **r.extra, **eval_metrics, **r.times}
    summary["cache/hits"] = sum(r.hits.values())
    return summary


def _scratch(r: Run, stage: str, key: str) -> Path:
    """A folder that survives a kill (checkpoints, finished rounds) until the stage's entry is complete."""
    root = r.cache.root / "checkpoints" if r.cache.enabled else r.out / "checkpoints"
    return root / stage / key


def _online_reward(r: Run, cfg, seed, pairs, candidates, policy, judge, judge_inputs, counters):
    """The reward an online optimizer calls: the judge itself (direct RLAIF) or a reward model
    trained on the judge's preference pairs (distilled RLAIF). Returns (reward, its identity)."""
    from rlaif.judges.reward_model import RewardModelJudge
    from rlaif.optimizers.base import JudgeReward

    o = cfg.optimizer
    if o.get("reward_source", "judge") == "reward_model":
        from rlaif.optimizers.reward_model import RewardModelTrainer

        rm_cfg = OmegaConf.to_container(cfg.reward_model, resolve=True)
        rm_inputs = {"model": policy.identity, "reward_model": rm_cfg, "seed": seed,
                     "pairs": stable_hash([p.to_dict() for p in pairs])}
        key = r.cache.key("reward_model", rm_inputs)
        hit = r.cache.get("reward_model", key)
        r.hits["reward_model"] = hit is not None
        if hit is None:
            def _build(d: Path):
                trainer = RewardModelTrainer(**{k: v for k, v in rm_cfg.items() if k != "_target_"})
                m = trainer.train(policy.path, pairs, d / "model", seed, r.tracker, cfg.policy.trust_remote_code)
                write_json(d / "reward_model_metrics.json", m)
            with r.timed("reward_model"):
                hit = r.cache.put("reward_model", key, _build)
        rm_metrics = _read_json(hit / "reward_model_metrics.json")
        r.tracker.log(rm_metrics)
        r.extra.update(rm_metrics)
        rm_judge = RewardModelJudge(judge.criterion, model=str(hit / "model"), dtype=rm_cfg.get("judge_dtype", "float32"),
                                    batch_size=int(rm_cfg.get("judge_batch_size", 16)),
                                    trust_remote_code=cfg.policy.trust_remote_code)
        return JudgeReward(rm_judge, counters=counters), {"reward_model": key}
    refs = None
    if not judge.pointwise:  # validated: optimizer.reward_reference is reference_policy
        refs = {c.prompt_id: c.text for c in sorted(candidates, key=lambda c: -c.index)}  # each prompt's sample 0
    return JudgeReward(judge, refs, counters), {"judge": judge_inputs["judge"], "judge_model": judge_inputs["judge_model"],
                                                "criterion": judge_inputs["criterion"], "references": bool(refs)}


def _train_stage(r: Run, cfg, seed, prompts, candidates, pairs, policy, judge, judge_inputs, criterion, gold,
                 offline_budget):
    from rlaif.optimizers.base import TrainContext

    optimizer = instantiate(cfg.optimizer)
    counters: dict[str, float] = {"judge_calls": 0, "generated_tokens": 0}
    reward, reward_id = None, None
    if optimizer.needs_reward:
        reward, reward_id = _online_reward(r, cfg, seed, pairs, candidates, policy, judge, judge_inputs, counters)
    budget = _budget(cfg, offline_budget)
    g = cfg.generator
    train_inputs = {"model": policy.identity, "optimizer": OmegaConf.to_container(cfg.optimizer, resolve=True),
                    "seed": seed, "prompts": _prompt_hash(prompts),
                    "pairs": stable_hash([p.to_dict() for p in pairs]) if optimizer.needs_pairs else None,
                    "reward": reward_id, "budget": budget.__dict__,
                    "sampling": {"max_new_tokens": int(g.max_new_tokens), "temperature": float(g.temperature),
                                 "top_p": float(g.top_p)}}
    if getattr(optimizer, "name", "") in ("self_rewarding", "cai_sft"):  # they judge with the run's criterion
        train_inputs["criterion"] = judge_inputs["criterion"]
    key = r.cache.key("train", train_inputs)
    hit = r.cache.get("train", key)
    r.hits["train"] = hit is not None
    if hit is None:
        scratch = _scratch(r, "train", key)
        ctx = TrainContext(policy_path=policy.path, output_dir=Path(), seed=seed, prompts=prompts, pairs=pairs,
                           reward=reward, judge=judge, criterion=criterion, gold=gold, tracker=r.tracker,
                           trust_remote_code=cfg.policy.trust_remote_code, checkpoint_dir=scratch,
                           max_new_tokens=int(g.max_new_tokens), temperature=float(g.temperature), top_p=float(g.top_p),
                           budget=budget, counters=counters)

        def _train(d: Path):
            ctx.output_dir = d / "model"
            last = optimizer.train(ctx)
            shutil.rmtree(d / "model" / "trainer", ignore_errors=True)
            spent = dict(offline_budget) if optimizer.needs_pairs else {}
            for k in ("judge_calls", "generated_tokens"):
                spent[k] = spent.get(k, 0) + counters.get(k, 0)
            last = {**last, "train/judge_calls": spent["judge_calls"], "train/generated_tokens": spent["generated_tokens"],
                    "train/unscorable_rewards": counters.get("unscorable", 0)}
            write_json(d / "train_metrics.json", last)
            ctx.write_history(d / "train_history.jsonl")
        hit = r.cache.put("train", key, _train)
        shutil.rmtree(scratch, ignore_errors=True)
    shutil.copyfile(hit / "train_history.jsonl", r.out / "train_history.jsonl")
    return optimizer, reward, hit / "model", f"trained:{key}", _read_json(hit / "train_metrics.json")


def _budget(cfg, offline: dict):
    """``budget.*``: null = each optimizer's own settings; ``offline`` = what labelling the offline
    preference data spent (so online methods get the same number of judge calls or tokens as DPO)."""
    from rlaif.optimizers.base import Budget

    b = cfg.get("budget") or {}
    vals = {}
    for k in ("judge_calls", "generated_tokens"):
        v = b.get(k)
        vals[k] = offline[k] if v == "offline" else (int(v) if v is not None else None)
    return Budget(**vals)


def _evaluate_stage(r: Run, cfg, seed, prompts, policy, policy_dir, trained_id, optimizer, reward, judge,
                    judge_inputs, judge_identity, criterion, gold):
    from rlaif.optimizers.best_of_n import best_of_n_kl

    pool, ev = r.pool, cfg.evaluation
    # The trained policy is a local model whatever generated the training candidates.
    eval_gen = HFGenerator(model=cfg.policy.model, temperature=ev.temperature, top_p=ev.top_p,
                           max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, dtype=ev.dtype)
    k = int(ev.samples_per_prompt)
    eval_seed = seed + 1  # same seed for both policies: paired samples
    ref_inputs = {"reference": policy.identity, "sampling": eval_gen.sampling_params(), "k": k,
                  "prompts": _prompt_hash(prompts), "seed": eval_seed}
    reference = r.records_stage("evaluate_reference", ref_inputs, lambda: {"eval_reference": eval_gen.generate(
        pool.model(cfg.policy.model, eval_gen.dtype), pool.tokenizer(cfg.policy.model), prompts, k, eval_seed,
        policy.identity, "reference", "evaluate: reference")}, {"eval_reference": Candidate})["eval_reference"]
    heldout_cfg = ev.get("heldout_judge")
    eval_inputs = {"policy": trained_id, "reference": ref_inputs, "judge": judge_inputs["judge"],
                   "judge_model": judge_identity, "criterion": judge_inputs["criterion"],
                   "gold": OmegaConf.to_container(cfg.data.gold, resolve=True) if cfg.data.get("gold") else None,
                   "kl_dtype": ev.kl_dtype,
                   "heldout": OmegaConf.to_container(heldout_cfg, resolve=True) if heldout_cfg else None}
    best_of_n = getattr(optimizer, "name", "") == "best_of_n"

    def _evaluate():
        tok = pool.tokenizer(cfg.policy.model)
        extra: dict[str, Any] = {}
        if best_of_n:  # n fresh reference samples per slot, the judge keeps its favourite
            n = optimizer.n
            pools = eval_gen.generate(pool.model(cfg.policy.model, eval_gen.dtype), tok, prompts, k * n,
                                      eval_seed + 7919, policy.identity, "best_of_n", f"evaluate: best-of-{n}")
            if getattr(reward, "references", None):  # a comparative judge: compare with a fresh reference sample
                refs = eval_gen.generate(pool.model(cfg.policy.model, eval_gen.dtype), tok, prompts, 1,
                                         eval_seed + 104729, policy.identity, "reference", "evaluate: baseline")
                reward.references.update({c.prompt_id: c.text for c in refs})
            pol, extra = optimizer.select(prompts, pools, reward, k)
            pol_model, kl = None, best_of_n_kl(n)
        else:
            pool.add("trained-policy", str(policy_dir), trained_id)
            pol = eval_gen.generate(pool.model("trained-policy", eval_gen.dtype), tok, prompts, k, eval_seed,
                                    trained_id, "policy", "evaluate: policy")
            pol_model, kl = pool.model("trained-policy", ev.kl_dtype), None
        heldout = None
        if heldout_cfg:
            heldout = instantiate(heldout_cfg, _partial_=True)(
                criterion=Criterion.from_config(ev.heldout_criteria) if ev.get("heldout_criteria") else criterion,
                pool=pool)
        samples, m = evaluate(prompts, pol, reference, judge, gold, pol_model,
                              pool.model(cfg.policy.model, ev.kl_dtype), tok, int(ev.kl_batch_size),
                              analytic_kl=kl, heldout_judge=heldout)
        m.update(extra)
        return {"eval_samples": samples, "eval_metrics": [{k: _finite_or_none(v) for k, v in m.items()}]}

    res = r.records_stage("evaluate", eval_inputs, _evaluate, {"eval_samples": EvalSample, "eval_metrics": dict})
    metrics = {k: (float("nan") if v is None else v) for k, v in res["eval_metrics"][0].items()}
    return metrics, res["eval_samples"]


def run_probes(judge, prompts: list[Prompt], pairs: list[PreferencePair], items: int) -> dict[str, float]:
    """Verbosity, injection and (comparative judges) swap probes on the first preference pairs."""
    by_id = {p.id: p for p in prompts}
    pairs = pairs[:items]
    ps = [by_id[p.prompt_id] for p in pairs]
    chosen = [p.chosen[0]["content"] for p in pairs]
    rejected = [p.rejected[0]["content"] for p in pairs]
    out = {}
    for k, v in verbosity_probe(judge, ps, rejected, other=chosen).items():
        if k in ("padded_win_rate", "mean_shift", "raise_rate"):
            out[f"judge/probe_verbosity_{k}"] = v
    for k, v in injection_probe(judge, ps, chosen, rejected).items():
        if k.endswith(("flip_rate", "mean_shift")):
            out[f"judge/probe_injection_{k.replace('/', '_')}"] = v
    if not judge.pointwise:
        for k, v in swap_probe(judge, ps, chosen, rejected).items():
            if k in ("position_consistency", "same_slot_rate", "max_swap_mismatch"):
                out[f"judge/probe_swap_{k.removeprefix('max_swap_')}"] = v
    return out


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _hydra_output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _hydra_sweep() -> str | None:
    """A name for the Hydra multirun this job belongs to (from its sweep folder), or None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ValueError, ImportError):
        return None
    if hc.mode != RunMode.MULTIRUN:
        return None
    parts = Path(str(hc.sweep.dir)).parts
    return "sweep-" + "_".join(parts[-2:]) if len(parts) >= 2 else f"sweep-{parts[-1]}"


def _hydra_choice(group: str) -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get(group)
    except ValueError:
        return None


def format_summary(name: str, s: dict, out: Path, location: str | None, hits: dict[str, bool]) -> str:
    def f(k, fmt="{:.3f}"):
        v = s.get(k)
        return "n/a" if v is None else fmt.format(v)

    stages = [k[5:-2] for k in s if k.startswith("time/") and k != "time/total_s"]
    lines = [
        "",
        f"== rlaif run '{name}' finished in {f('time/total_s', '{:.0f}')} s ==",
        f"  gold reward   reference {f('eval/gold_reward_reference')}  ->  policy {f('eval/gold_reward_policy')}"
        f"   (gain {f('eval/gold_reward_gain', '{:+.3f}')}, n={f('eval/samples_per_policy', '{:.0f}')} per policy)",
        f"  judge win rate of policy over reference: {f('eval/win_rate')}",
        f"  KL(policy || reference): {f('eval/kl')} nats per response",
        f"  mean length   reference {f('eval/length_reference', '{:.1f}')}  ->  policy {f('eval/length_policy', '{:.1f}')} tokens",
        f"  training spent {f('train/judge_calls', '{:.0f}')} judge calls and {f('train/generated_tokens', '{:.0f}')}"
        f" generated tokens",
        f"  preference pairs: {f('preferences/pairs', '{:.0f}')} (invalid judgments {f('judge/invalid', '{:.0f}')},"
        f" judge agrees with gold on {f('judge/pair_agreement_with_gold', '{:.0%}')} of pairs)",
        "  time per stage: " + ", ".join(
            f"{st} {s[f'time/{st}_s']:.0f}s{' (cached)' if hits.get(st) else ''}" for st in stages),
        f"  run folder: {out}",
        f"  W&B: {location or 'not tracked (tracker=none)'}",
        "",
    ]
    return "\n".join(lines)
