"""One experiment run, top to bottom: prompts -> candidates -> judgments -> preferences ->
trained policy -> evaluation, with every stage's records in the run folder and the cache.

``run(cfg)`` is what the CLI, tests and sweepers call; it returns the summary metrics.

Reliability (what a kill, Ctrl-C or a rerun does):

* Stages are content-addressed cache entries (rlaif/cache.py); inside a stage, generation,
  judging and evaluation sampling journal every finished batch and training checkpoints every
  ``optimizer.save_steps`` steps, in the stage's scratch folder (rlaif/journal.py,
  rlaif/optimizers/checkpoints.py). A rerun skips finished batches and resumes from the newest
  checkpoint, and ends with the outputs of an uninterrupted run.
* The run registry (rlaif/runs.py) makes "rerun the same command" continue the unfinished run of
  the same config: same run folder, same W&B run id (``resume: auto | never``).
* Ctrl-C and SIGTERM stop the run with its partial work kept, the tracker finished and a
  message saying to rerun; KeyboardInterrupt is re-raised (exit status 130 from the shell).
* ``replay`` reruns an experiment from the recorded candidates and judgments of an earlier run
  without loading the models that made them (rlaif/replay.py).
* ``<run folder>/progress.json`` says which stage the run is in and what it reused or computed;
  the summary's ``resume/*`` keys count the same.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlaif import distributed, precision, progress
from rlaif.cache import StageCache, stable_hash
from rlaif.config import ConfigError, validate
from rlaif.criteria import Criterion
from rlaif.data import load_prompts_with_stats, prompt_token_limit, truncate_prompts
from rlaif.diagnostics import (
    compute_diagnostics,
    diagnostics_plot,
    injection_probe,
    inter_judge_agreement,
    swap_probe,
    verbosity_probe,
)
from rlaif.diagnostics.gate import JudgeGateError, check_gate
from rlaif.evaluation import KL_ESTIMATOR, evaluate
from rlaif.generators import HFGenerator
from rlaif.io import atomic_write_text, read_jsonl, read_records, write_json, write_records
from rlaif.journal import Journal, Progress, add_spent, spent_since
from rlaif.judges.base import rank_in_chunks
from rlaif.manifest import build_manifest, scrub_hydra_dir
from rlaif.models import ModelPool
from rlaif.preferences import build_pairs
from rlaif.replay import Recorded, ReplayError, load_recorded
from rlaif.runs import RunRegistry, config_hash, interrupt_signals, replay_key
from rlaif.tracking import NullTracker, new_run_id, redact
from rlaif.types import Candidate, EvalSample, Judgment, PairwiseVerdict, PreferencePair, Prompt

log = logging.getLogger(__name__)


class StageWork:
    """What a stage's computation gets besides its inputs: journals in the stage's scratch folder."""

    def __init__(self, r: Run, stage: str, scratch: Path):
        self.r, self.stage, self.scratch = r, stage, scratch

    def journal(self, name: str) -> Journal:
        """``<scratch>/<name>.jsonl``: finished batches survive a kill; counts go to progress.json."""
        return self.r.progress.journal(self.stage, self.scratch / f"{name}.jsonl")


class Run:
    """State shared by the stages of one run: folders, cache, models, tracker, timings, progress."""

    def __init__(self, cfg: DictConfig, out: Path, progress: Progress | None = None):
        self.cfg, self.out = cfg, out
        self.progress = progress or Progress(out)
        self.cache = StageCache(cfg.cache.dir, cfg.cache.enabled)
        self.pool = ModelPool(cfg.cache.dir, cfg.policy.prefer_hub, cfg.policy.trust_remote_code,
                              cfg.policy.allow_pickle)
        self.times: dict[str, float] = {}
        self.hits: dict[str, bool] = {}
        self.extra: dict[str, Any] = {}  # metrics of optional stages (e.g. reward-model training)
        self.main = distributed.is_main()  # False: another process of a multi-process launch (rlaif/distributed.py)
        self.tracker = instantiate(cfg.tracker) if self.main else NullTracker()
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

    def scratch(self, stage: str, key: str) -> Path:
        """A folder that survives a kill (journals, checkpoints) until the stage's entry is complete."""
        return self.cache.scratch(stage, key) if self.cache.enabled else self.out / "checkpoints" / stage / key

    def computed_once(self, stage: str, key: str, build: Callable[[StageWork], Callable[[Path], Any]]) -> Path:
        """The cache entry of (stage, key): reused when complete, else computed under the entry's lock.

        ``build(work)`` does the work (journaling into ``work``'s scratch folder) and returns the
        function that writes the entry's files. The scratch folder is removed once the entry is
        complete. Another run computing the same entry is waited for, then reused.
        """
        self.progress.enter(stage)
        if distributed.enabled() and (not self.main or stage in distributed.COLLECTIVE_STAGES):
            return self._computed_by_all(stage, key, build)  # process 0's other stages: as in one process
        hit = self.cache.get(stage, key)
        if hit is None:
            with self.cache.lock(stage, key):
                hit = self.cache.get(stage, key)  # another run may have finished it while we waited
                if hit is None:
                    scratch = self.scratch(stage, key)
                    write = build(StageWork(self, stage, scratch))
                    hit = self.cache.put(stage, key, write)
                    shutil.rmtree(scratch, ignore_errors=True)
                    if not self.cache.enabled:  # leave no empty checkpoints/<stage>/ folders in the run folder
                        for parent in (scratch.parent, scratch.parent.parent):
                            with contextlib.suppress(OSError):
                                parent.rmdir()
                    self.hits[stage] = False
                    return hit
        self.hits[stage] = True
        log.info("%s: reusing cached results (%s)", stage, hit)
        return hit

    def _computed_by_all(self, stage: str, key: str, build: Callable[[StageWork], Callable[[Path], Any]]) -> Path:
        """``computed_once`` in a multi-process launch, for the processes other than 0 (which read process
        0's entry) and for a training stage, which every process computes together (process 0 keeps it)."""
        if stage not in distributed.COLLECTIVE_STAGES:
            hit = distributed.wait_for_entry(self.cache, stage, key)
            self.hits[stage] = True
            return hit
        # Everyone trains. Process 0 holds the entry's lock (another launch may be computing it) and
        # tells the others whether the entry already exists.
        with self.cache.lock(stage, key) if self.main else contextlib.nullcontext():
            hit = self.cache.get(stage, key) if self.main else None
            if distributed.broadcast(hit is not None):
                self.hits[stage] = True
                return hit if self.main else distributed.wait_for_entry(self.cache, stage, key)
            scratch = self.scratch(stage, key)  # the same folder on every process: checkpoints are shared
            write = build(StageWork(self, stage, scratch))
            if self.main:
                hit = self.cache.put(stage, key, write)
                shutil.rmtree(scratch, ignore_errors=True)
            else:
                with tempfile.TemporaryDirectory(prefix=f"rlaif-rank{distributed.rank()}-{stage}-") as tmp:
                    write(Path(tmp))  # trains beside process 0; what it writes is dropped
                hit = distributed.wait_for_entry(self.cache, stage, key)
        self.hits[stage] = False
        return hit

    def records_stage(self, stage: str, inputs: dict, compute: Callable[[StageWork], dict[str, list]],
                      types: dict[str, type]) -> dict[str, list]:
        """Run or reuse a stage whose outputs are record lists; copy them into the run folder.

        ``compute(work)`` returns {name: records}; it may journal its batches through ``work``.
        """
        def build(work: StageWork):
            results = compute(work)
            return lambda d: [write_records(d / f"{n}.jsonl", rs) for n, rs in results.items()]

        hit = self.computed_once(stage, self.cache.key(stage, inputs), build)
        out = {}
        for name, cls in types.items():
            src = hit / f"{name}.jsonl"
            copy_atomic(src, self.out / f"{name}.jsonl")
            out[name] = read_records(src, cls) if cls is not dict else read_jsonl(src)
        if self.hits[stage]:
            first = next(iter(out.values()), [])
            self.progress.cached(stage, len(first))
        return out


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy a file so that ``dst`` is either the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # what a plain copy would get, not mkstemp's 0600
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _link_atomic(target: Path, link: Path) -> None:
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _finite_or_none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _prompt_hash(prompts: list[Prompt]) -> str:
    return stable_hash([p.to_dict() for p in prompts])


def check_reliability_keys(cfg: DictConfig) -> None:
    """``resume``, ``replay`` and ``journal.*`` (validated here: they belong to this module)."""
    errors = []
    if cfg.get("resume", "auto") not in ("auto", "never"):
        errors.append(f"resume: '{cfg.get('resume')}' is not one of auto, never")
    rp = cfg.get("replay")
    if rp is not None and not isinstance(rp, (bool, str)):
        errors.append(f"replay: expected null, true or a run folder, got {rp!r}")
    chunk = OmegaConf.select(cfg, "journal.chunk_prompts", default=8)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        errors.append(f"journal.chunk_prompts: expected an integer >= 1, got {chunk!r}")
    if errors:
        raise ConfigError("Invalid config:\n  - " + "\n  - ".join(errors))


# The HF trainers' wall-clock figures differ between identical runs, so they stay out of the summary
# (time/train_s has the training time; train_history.jsonl keeps them).
TRAINER_CLOCK = ("_runtime", "_per_second", "step_time")

def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume, or replay) one experiment; return its summary metrics.

    ``output_dir``: the run folder (default: Hydra's). An unfinished run of the same config in
    the same folder is resumed; without ``output_dir``, an unfinished run of the same config in
    any folder is (``resume: auto``; see rlaif/runs.py).
    """
    t_start = time.perf_counter()
    if output_dir is None:  # Hydra wrote .hydra/ (the overrides verbatim) before this ran: mask secrets first
        scrub_hydra_dir(_hydra_output_dir(), OmegaConf.to_container(cfg, resolve=False))
    validate(cfg)
    cfg = copy.deepcopy(cfg)  # the caller's config keeps its "auto"s
    auto_dtypes = precision.resolve_config(cfg)  # every dtype: auto becomes this machine's choice, before any key
    check_reliability_keys(cfg)
    if errors := distributed.check(cfg):
        raise ConfigError("Invalid config for a multi-process launch:\n  - " + "\n  - ".join(errors))
    distributed.init()
    main = distributed.is_main()  # another process of a multi-process launch keeps nothing (rlaif/distributed.py)
    if not main:  # process 0 reports; the others only warn
        logging.getLogger("rlaif").setLevel(logging.WARNING)
    else:
        precision.announce(auto_dtypes)
    name = cfg.name or _hydra_choice("experiment") or "rlaif"
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))

    # Data and model resolution first: both fail fast, before any model loads.
    d = cfg.data
    prompts, data_stats = load_prompts_with_stats(d.path, d.template, d.system, d.num_train, d.num_eval,
                                                  d.split_seed, d.text_field, d.duplicates, d.max_line_bytes)
    prompts, data_stats["data/truncated_prompts"] = _fit_prompts(cfg, prompts)
    train_prompts = [p for p in prompts if p.split == "train"]
    eval_prompts = [p for p in prompts if p.split == "eval"]
    registry = RunRegistry(cfg.cache.dir if cfg.cache.enabled and main else None)
    recorded = _replay_source(cfg, resolved, registry, train_prompts)  # replay: records checked, nothing loaded

    # Which run folder and W&B run: a new one, or the unfinished run of this config (resume: auto).
    key = config_hash(resolved)
    fresh_out = Path(output_dir) if output_dir else _hydra_output_dir()
    hydra_out = fresh_out
    if not main:  # a scratch run folder, removed at the end; process 0 writes the run's
        fresh_out = Path(tempfile.mkdtemp(prefix=f"rlaif-rank{distributed.rank()}-"))
    fresh = {"output_dir": str(fresh_out.resolve()), "wandb_run_id": new_run_id(), "config_hash": key,
             "replay_key": replay_key(resolved), "name": name,
             "replay_of": str(recorded.folder) if recorded else None}
    any_folder = output_dir is None and _hydra_sweep() is None  # sweeps keep their own job folders
    entry, resumed = registry.claim(key, fresh, allow_resume=cfg.get("resume", "auto") == "auto",
                                    folder=None if any_folder else fresh["output_dir"])
    out = Path(entry["output_dir"])
    r: Run | None = None
    try:
        with interrupt_signals():
            out.mkdir(parents=True, exist_ok=True)
            attempt = Progress.previous_attempt(out) + 1 if resumed else 1
            if resumed:
                print(f"rlaif: resuming the unfinished run of this config in {out} (attempt {attempt}, W&B run "
                      f"{entry['wandb_run_id']}); finished work is reused from the cache", flush=True)
                if fresh_out.resolve() != out.resolve() and fresh_out.is_dir():
                    _link_atomic(out, fresh_out / "resumed_run")  # Hydra's new folder points at the run it continues
            atomic_write_text(out / "resolved_config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
            r = Run(cfg, out, Progress(out, attempt))
            r.extra.update(data_stats)  # data/duplicates_dropped, data/truncated_prompts -> summary
            seed = int(cfg.seed)
            write_records(out / "prompts.jsonl", prompts)
            criterion = Criterion.from_config(cfg.criteria)
            judge = instantiate(cfg.judge, _partial_=True)(criterion=criterion, pool=r.pool)  # loads nothing yet
            if recorded is None:
                policy = r.pool.resolve(cfg.policy.model)
                judge_identity = judge.identity
            else:  # the recorded identities key every downstream stage; weights are found only if one must run
                policy = _RecordedModel(r.pool, cfg.policy.model, recorded.models.get("policy", ""))
                judge_identity = recorded.models.get("judge", "")
            gold = instantiate(cfg.data.gold) if cfg.data.get("gold") else None

            manifest = build_manifest(resolved, {"policy": policy.identity, "judge": judge_identity},
                                      redact(OmegaConf.to_container(cfg.criteria, resolve=True)), seed)
            manifest["run"] = {"attempt": attempt, "resumed": resumed is not None,
                               "processes": distributed.world_size(),
                               "wandb_run_id": entry["wandb_run_id"],
                               "replay_of": str(recorded.folder) if recorded else None}
            manifest["precision"] = {**precision.detect().as_dict(), "auto_keys": auto_dtypes}
            write_json(out / "manifest.json", manifest)
            r.tracker.start(out, {**resolved, "manifest": {k: v for k, v in manifest.items() if k != "config"}},
                            name, run_id=entry["wandb_run_id"], resume=resumed is not None)
            if r.tracker.run_id and r.tracker.run_id != entry["wandb_run_id"]:
                registry.update(key, entry, wandb_run_id=r.tracker.run_id)
            summary = _stages(r, cfg, seed, train_prompts, eval_prompts, policy, judge, judge_identity, criterion,
                              gold, recorded)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", 2)
        stage = r.progress.state.get("stage") if r is not None else None
        registry.update(key, entry, status="interrupted")
        if r is not None:
            r.progress.set(status="interrupted")
            with contextlib.suppress(Exception):
                r.tracker.finish(exit_code=128 + int(signum))
        where = r.cache.root if r is not None and r.cache.enabled else out
        if not main:  # process 0 says how to resume
            shutil.rmtree(out, ignore_errors=True)
            raise
        print(f"\nrlaif: interrupted; rerun the same command to resume (stopped in the '{stage}' stage; finished "
              f"batches and checkpoints are kept under {where}; the run folder is {out})", file=sys.stderr, flush=True)
        raise
    except BaseException:
        if not main:
            shutil.rmtree(out, ignore_errors=True)
            raise
        registry.update(key, entry, status="failed")
        if r is not None:
            r.progress.set(status="failed")
            with contextlib.suppress(Exception):
                r.tracker.finish(exit_code=1)
        raise
    progress = r.progress
    summary.update(progress.counters())
    summary.update(precision.summary(auto_dtypes))
    summary["time/total_s"] = round(time.perf_counter() - t_start, 2)
    summary = {k: _finite_or_none(v) for k, v in summary.items()}
    if not main:  # the summary of the entries process 0 computed; process 0 writes and prints it
        _drop_scratch_run(out, hydra_out)
        return summary
    write_json(out / "summary.json", summary)
    r.tracker.summary(summary)
    location = r.tracker.location
    r.tracker.finish()
    progress.set(status="finished", stage=None)
    registry.update(key, entry, status="finished")
    print(format_summary(name, summary, out, location, r.hits))
    return summary


def _drop_scratch_run(out: Path, hydra_out: Path) -> None:
    """Another process's scratch run folder, and the folder Hydra made for it unless process 0 uses it."""
    shutil.rmtree(out, ignore_errors=True)
    if hydra_out.is_dir() and not (hydra_out / "resolved_config.yaml").exists():
        shutil.rmtree(hydra_out, ignore_errors=True)


def _fit_prompts(cfg: DictConfig, prompts: list[Prompt]) -> tuple[list[Prompt], int]:
    """Cut prompts longer than ``data.max_prompt_tokens`` (null: the policy's context minus the
    longest response sampled) as ``data.truncation`` says; returns the prompts and how many were cut.

    Needs only the policy's config.json and tokenizer. A replay whose policy cannot be found
    keeps the prompts as loaded (the recorded ones were cut when they were recorded).
    """
    from rlaif.models import ModelResolutionError

    d = cfg.data
    pool = ModelPool(cfg.cache.dir, cfg.policy.prefer_hub, cfg.policy.trust_remote_code, cfg.policy.allow_pickle)
    try:
        policy = pool.resolve(cfg.policy.model)
    except ModelResolutionError:
        if cfg.get("replay") in (None, False):
            raise
        log.warning("replay: policy.model=%s cannot be found; prompts are not checked against its context",
                    cfg.policy.model)
        return prompts, 0
    new_tokens = max(int(cfg.generator.max_new_tokens), int(cfg.evaluation.max_new_tokens))
    limit = prompt_token_limit(d.max_prompt_tokens, policy.path, new_tokens)
    if limit is None:
        return prompts, 0
    return truncate_prompts(prompts, pool.tokenizer(cfg.policy.model), limit, d.truncation, d.template)


class _RecordedModel:
    """A model known by its recorded identity (replay): its weights are looked up only when a stage
    that is not in the cache needs them, so a replay that is all cache hits never touches them."""

    def __init__(self, pool: ModelPool, name: str, identity: str):
        self.pool, self.name, self.identity = pool, name, identity

    @property
    def path(self) -> str:
        resolved = self.pool.resolve(self.name)  # raises ModelResolutionError naming what it tried
        if resolved.identity != self.identity:
            log.warning("replay: policy.model=%s is %s, the recorded run used %s; trained and evaluated stages are "
                        "keyed by the recorded identity", self.name, resolved.identity, self.identity)
        return resolved.path


def _replay_source(cfg: DictConfig, resolved: dict, registry: RunRegistry, train_prompts) -> Recorded | None:
    """The recorded run a ``replay`` run reads (checked before anything loads), or None."""
    rp = cfg.get("replay")
    if rp is None or rp is False or (isinstance(rp, str) and rp.lower() in ("", "false", "null", "none")):
        return None
    if rp is True or (isinstance(rp, str) and rp.lower() == "true"):
        found = registry.latest_finished(replay_key(resolved))
        if found is None:
            raise ReplayError("replay=true: no finished run with this config's data, policy, generator, judge, criteria "
                              "and seed is registered in " + str(registry.root) + ". Create one by running the same "
                              "command without replay=true, or replay a run folder: replay=outputs/<date>/<time>_<name>")
        folder = found["output_dir"]
        log.info("replay: replaying %s", folder)
    else:
        folder = rp
    rec = load_recorded(folder, resolved, train_prompts)
    print(f"rlaif: replaying the generations and judgments recorded in {rec.folder}", flush=True)
    return rec


def _stages(r: Run, cfg, seed, train_prompts, eval_prompts, policy, judge, judge_identity, criterion, gold,
            recorded: Recorded | None = None) -> dict:
    out, pool = r.out, r.pool
    chunk = int(OmegaConf.select(cfg, "journal.chunk_prompts", default=8))

    # 1. Sample k candidates per training prompt (batches journaled: a rerun skips finished ones).
    failures = 0
    with r.timed("generate"):
        if recorded is not None:  # replay: the recorded run's candidates; no generator is built
            candidates = _replayed(r, "generate", recorded, {"candidates": recorded.candidates})["candidates"]
            gen_acct: dict = {}
        else:
            generator = instantiate(cfg.generator)
            gen_inputs = {"model": generator.identity(pool), "sampling": generator.sampling_params(), "seed": seed,
                          "prompts": _prompt_hash(train_prompts), "k": generator.num_candidates}

            gen_journals: list[Journal] = []

            def _generate(work: StageWork):
                nonlocal failures
                gen_journals.append(work.journal("candidates"))
                cands, failures = _sample_resumable(generator, pool, train_prompts, seed, gen_journals[-1], chunk)
                return {"candidates": cands}

            candidates = r.records_stage("generate", gen_inputs, _generate, {"candidates": Candidate})["candidates"]
            # this attempt's spend plus that of the batches earlier attempts had finished
            gen_acct = (add_spent(generator.accounting(), gen_journals + _answer_logs(generator))
                        if hasattr(generator, "accounting") else {})
    if failures:
        log.warning("generate: %d requests failed after retries; those candidates are missing", failures)
    gen_metrics = {**{f"generate/api_{k}": v for k, v in gen_acct.items()},
                   "generate/candidates": len(candidates),
                   "generate/mean_tokens": sum(c.num_tokens for c in candidates) / max(len(candidates), 1),
                   "generate/finished_rate": sum(c.finished for c in candidates) / max(len(candidates), 1)}
    r.tracker.log(gen_metrics)

    # 2. Judge them under the criterion (frozen judge; may share the policy's loaded weights), in
    #    journaled groups of `journal.chunk_prompts` prompts.
    if recorded is None:
        judge_inputs = {"judge": OmegaConf.to_container(cfg.judge, resolve=True), "judge_model": judge_identity,
                        "criterion": OmegaConf.to_container(cfg.criteria, resolve=True),
                        "candidates": stable_hash([c.to_dict() for c in candidates]),
                        "prompts": _prompt_hash(train_prompts), "chunk_prompts": chunk}
    else:  # exactly what the recorded run hashed, so its downstream cache entries are found
        judge_inputs = {"judge": recorded.config["judge"], "judge_model": judge_identity,
                        "criterion": recorded.config["criteria"],
                        "candidates": stable_hash([c.to_dict() for c in candidates]),
                        "prompts": _prompt_hash(train_prompts)}
        rec_chunk = (recorded.config.get("journal") or {}).get("chunk_prompts")
        if rec_chunk is not None:
            judge_inputs["chunk_prompts"] = rec_chunk
    judge_journals: list[Journal] = []
    with r.timed("judge"):
        if recorded is not None:
            res = _replayed(r, "judge", recorded, {"judgments": recorded.judgments, "verdicts": recorded.verdicts,
                                                    "judge_members": [{"name": n, "prefs": p}
                                                                      for n, p in recorded.members.items()]})
        else:
            def _judge(work: StageWork):
                judge_journals.append(work.journal("judgments"))
                judgments, verdicts, members = rank_in_chunks(judge, train_prompts, candidates, chunk,
                                                              judge_journals[-1])
                return {"judgments": judgments, "verdicts": verdicts,
                        "judge_members": [{"name": n, "prefs": p} for n, p in members.items()]}
            res = r.records_stage("judge", judge_inputs, _judge, {"judgments": Judgment, "verdicts": PairwiseVerdict,
                                                                   "judge_members": dict})
    judgments, verdicts = res["judgments"], res["verdicts"]
    members = {row["name"]: row["prefs"] for row in res["judge_members"]}
    judge.remember(train_prompts, candidates, judgments)  # later uses see the values an uninterrupted run kept

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
            def _diagnose(work: StageWork):
                swapped = [v for v in verdicts if v.swapped]  # only pairs judged in both orders show position bias
                d = compute_diagnostics(train_prompts, candidates, judgments, swapped, g or None, judge_identity,
                                        policy.identity)
                if len(members) >= 2:  # a panel just ranked the candidates: how far do its members agree?
                    ija = inter_judge_agreement(members)
                    d.update({f"judge/panel_{k}": v for k, v in ija.items() if k in ("mean_agreement", "mean_cohen_kappa")})
                if int(cfg.diagnostics.probe_items) > 0 and pairs:  # probes call the judge: cached with the rest
                    judge_journals.append(work.journal("probes"))  # each finished probe survives a kill
                    d.update(run_probes(judge, train_prompts, pairs, int(cfg.diagnostics.probe_items),
                                        judge_journals[-1]))
                return {"diagnostics": [d]}
            diag_inputs = {**judge_inputs, "policy": policy.identity, "gold": stable_hash(sorted([list(k), v] for k, v in g.items())),
                           "pairs": stable_hash([p.to_dict() for p in pairs]),
                           "probe_items": int(cfg.diagnostics.probe_items)}
            diag = r.records_stage("diagnostics", diag_inputs, _diagnose,
                                   {"diagnostics": dict})["diagnostics"][0]
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
    if backend is not None and hasattr(backend, "accounting"):  # with what earlier attempts' batches cost
        metrics.update({f"judge/api_{k}": v
                        for k, v in add_spent(backend.accounting(), judge_journals + _answer_logs(judge)).items()})
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
    _link_atomic(policy_dir, out / "policy")

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

    train_summary = {f"train/{k.removeprefix('train/')}": v for k, v in train_metrics.items()
                     if not k.removeprefix("train/").endswith(TRAINER_CLOCK)}
    summary = {**gen_metrics, **metrics, **train_summary, **r.extra, **eval_metrics, **r.times}
    summary["cache/hits"] = sum(r.hits.values())
    return summary


def _replayed(r: Run, stage: str, recorded: Recorded, records: dict[str, list]) -> dict[str, list]:
    """A replayed stage: the recorded run's records, written to this run folder as a computed stage's are."""
    r.progress.enter(stage)
    for name, rows in records.items():
        write_records(r.out / f"{name}.jsonl", rows)
    r.hits[stage] = True
    r.progress.cached(stage, len(next(iter(records.values()), [])))
    log.info("%s: replayed from %s", stage, recorded.folder)
    return records


def _answer_logs(obj) -> list:
    """The answer logs an API generator's or judge's clients replayed from (their spend counts too)."""
    from rlaif.judges.base import api_clients

    clients = [obj.client] if hasattr(getattr(obj, "client", None), "answer_logs") else api_clients(obj)
    return [log for c in clients for log in c.answer_logs]


def _sample_resumable(generator, pool, prompts: list[Prompt], seed: int, journal: Journal,
                      chunk: int) -> tuple[list[Candidate], int]:
    """All candidates for ``prompts``, journaled; returns (candidates, failed requests).

    A generator whose ``sample`` takes a journal (HFGenerator) journals its own seeded batches;
    any other is called on groups of ``chunk`` prompts, which is the same as one call because its
    samples do not depend on which prompts share a call (the API generator seeds each request
    from (seed, candidate index)). An API batch in which a request failed is not journaled; its
    answered requests are, one by one, so a rerun sends only the failed ones. More failures than
    ``generator.max_failed_share`` stop the run once every batch was tried.
    """
    if "journal" in inspect.signature(generator.sample).parameters:
        cands = generator.sample(pool, prompts, seed=seed, desc="generate candidates", journal=journal)
        return cands, int(getattr(generator, "failures", 0) or 0)
    out: list[Candidate] = []
    failures = 0
    accounting = getattr(generator, "accounting", None)  # API generators count their spend per batch
    client = getattr(generator, "client", None)
    answers = None
    if hasattr(client, "record_answers"):
        from rlaif.backends.api import AnswerLog
        from rlaif.judges.base import answers_journal_path

        answers = AnswerLog(Journal(answers_journal_path(journal)))
        client.record_answers(answers)
        start = (client.requests, client.failures)
    try:
        for n, first in enumerate(range(0, len(prompts), chunk)):
            ps = prompts[first : first + chunk]
            items = [p.id for p in ps]
            done = journal.lookup(n, items)
            if done is None:
                before = accounting() if accounting is not None else None
                replayed = dict(answers.journal.reused_spent) if answers is not None else {}
                cs = generator.sample(pool, ps, seed=seed, desc=f"generate candidates ({first + len(ps)}/{len(prompts)})")
                failed = int(getattr(generator, "failures", 0) or 0)
                failures += failed
                done = [c.to_dict() for c in cs]
                if not failed:  # a batch with missing candidates is never recorded as finished
                    spent = spent_since(accounting, before)
                    if spent is not None and answers is not None:  # answers of earlier attempts it reused
                        for k, v in answers.journal.reused_spent.items():
                            if k in spent:
                                spent[k] += v - replayed.get(k, 0)
                    journal.append(n, items, done, spent=spent)
            out += [Candidate.from_dict(row) for row in done]
    finally:
        if answers is not None:
            client.record_answers(None)
    if answers is not None:
        client.check_failures(client.failures - start[1], client.requests - start[0], "generation requests",
                              "generator.max_failed_share")
    return out, failures + int(journal.reused_spent.get("failures", 0))


def _scratch(r: Run, stage: str, key: str) -> Path:
    """A folder that survives a kill (checkpoints, finished rounds) until the stage's entry is complete."""
    return r.scratch(stage, key)


def _online_reward(r: Run, cfg, seed, pairs, candidates, policy, judge, judge_inputs, counters):
    """The reward an online optimizer calls: the judge itself (direct RLAIF) or a reward model
    trained on the judge's preference pairs (distilled RLAIF). Returns (reward, its identity)."""
    from rlaif.judges.reward_model import RewardModelJudge
    from rlaif.optimizers.base import JudgeReward

    o = cfg.optimizer
    if o.get("reward_source", "judge") == "reward_model":
        from rlaif.optimizers.reward_model import RewardModelTrainer

        rm_cfg = OmegaConf.to_container(cfg.reward_model, resolve=True)
        rm_key_cfg = {k: v for k, v in rm_cfg.items() if k != "save_steps"}  # checkpointing changes no weight
        rm_inputs = {"model": policy.identity, "reward_model": rm_key_cfg, "seed": seed,
                     "pairs": stable_hash([p.to_dict() for p in pairs])}
        key = r.cache.key("reward_model", rm_inputs)

        def _build_in(work: StageWork):
            where, step = _train_resume_point(work.scratch)
            if where is not None:
                log.info("reward_model: resuming from %s", where)
                if r.main:
                    print(f"rlaif: reward-model training resumes from {where}", flush=True)
            r.progress.set(reward_model={"resumed_from": where, "resumed_step": step})

            def _build(d: Path):  # checkpoints go to the scratch folder, which outlives a kill
                trainer = RewardModelTrainer(**{k: v for k, v in rm_cfg.items() if k != "_target_"})
                m = trainer.train(policy.path, pairs, d / "model", seed, r.tracker, cfg.policy.trust_remote_code,
                                  checkpoint_dir=work.scratch)
                write_json(d / "reward_model_metrics.json", m)
            return _build
        with r.timed("reward_model"):
            hit = r.computed_once("reward_model", key, _build_in)
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
    opt_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    opt_cfg.pop("save_steps", None)  # how often to checkpoint does not change the trained policy
    train_inputs = {"model": policy.identity, "optimizer": opt_cfg,
                    "seed": seed, "prompts": _prompt_hash(prompts),
                    "pairs": stable_hash([p.to_dict() for p in pairs]) if optimizer.needs_pairs else None,
                    "reward": reward_id, "budget": budget.__dict__,
                    "sampling": {"max_new_tokens": int(g.max_new_tokens), "temperature": float(g.temperature),
                                 "top_p": float(g.top_p)}}
    if getattr(optimizer, "name", "") in ("self_rewarding", "cai_sft"):  # they judge with the run's criterion
        train_inputs["criterion"] = judge_inputs["criterion"]
    key = r.cache.key("train", train_inputs)

    def build(work: StageWork):
        scratch = work.scratch
        where, step = _train_resume_point(scratch)
        if where is not None:
            log.info("train: resuming from %s", where)
            if r.main:
                print(f"rlaif: training resumes from {where}", flush=True)
        r.progress.set(train={"resumed_from": where, "resumed_step": step})
        ctx = TrainContext(policy_path=policy.path, output_dir=Path(), seed=seed, prompts=prompts, pairs=pairs,
                           reward=reward, judge=judge, criterion=criterion, gold=gold, tracker=r.tracker,
                           trust_remote_code=cfg.policy.trust_remote_code, checkpoint_dir=scratch,
                           max_new_tokens=int(g.max_new_tokens), temperature=float(g.temperature), top_p=float(g.top_p),
                           budget=budget, counters=counters)

        def write(d: Path):  # trains into the entry's temp folder, checkpointing in the scratch folder
            ctx.output_dir = d / "model"
            last = optimizer.train(ctx)
            counters.update(distributed.sum_counters(counters))  # every process's judge calls and tokens
            last = {**last, **distributed.sum_counters({k: v for k, v in last.items()
                                                        if k in distributed.PER_PROCESS_METRICS})}
            shutil.rmtree(d / "model" / "trainer", ignore_errors=True)
            spent = dict(offline_budget) if optimizer.needs_pairs else {}
            for k in ("judge_calls", "generated_tokens"):
                spent[k] = spent.get(k, 0) + counters.get(k, 0)
            last = {**last, "train/judge_calls": spent["judge_calls"],
                    "train/generated_tokens": spent["generated_tokens"],
                    "train/unscorable_rewards": counters.get("unscorable", 0)}
            write_json(d / "train_metrics.json", last)
            ctx.write_history(d / "train_history.jsonl")
        return write

    hit = r.computed_once("train", key, build)
    copy_atomic(hit / "train_history.jsonl", r.out / "train_history.jsonl")
    return optimizer, reward, hit / "model", f"trained:{key}", _read_json(hit / "train_metrics.json")


def _train_resume_point(scratch: Path) -> tuple[str | None, int | None]:
    """The checkpoint a training stage will resume from (TRL trainers, PPO, self-rewarding rounds)."""
    from rlaif.optimizers.checkpoints import complete_checkpoints

    done = complete_checkpoints(scratch / "trainer", clean=False) or complete_checkpoints(scratch, clean=False)
    if done:
        return str(done[-1]), int(done[-1].name.rsplit("-", 1)[1])
    ppo = sorted(p for p in scratch.glob("ppo-iter-*") if (p / "state.json").exists()) if scratch.exists() else []
    if ppo:
        return str(ppo[-1]), int(ppo[-1].name.rsplit("-", 1)[1])
    rounds = sorted(p for p in scratch.glob("round_*") if (p / "round.json").exists()) if scratch.exists() else []
    if rounds:
        return str(rounds[-1]), int(rounds[-1].name.rsplit("_", 1)[1])
    return None, None


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
    reference = r.records_stage("evaluate_reference", ref_inputs, lambda work: {"eval_reference": eval_gen.generate(
        pool.model(cfg.policy.model, eval_gen.dtype), pool.tokenizer(cfg.policy.model), prompts, k, eval_seed,
        policy.identity, "reference", "evaluate: reference", journal=work.journal("eval_reference"))},
        {"eval_reference": Candidate})["eval_reference"]
    heldout_cfg = ev.get("heldout_judge")
    eval_inputs = {"policy": trained_id, "reference": ref_inputs, "judge": judge_inputs["judge"],
                   "judge_model": judge_identity, "criterion": judge_inputs["criterion"],
                   "gold": OmegaConf.to_container(cfg.data.gold, resolve=True) if cfg.data.get("gold") else None,
                   "kl_dtype": ev.kl_dtype, "kl_estimator": KL_ESTIMATOR,
                   "heldout": OmegaConf.to_container(heldout_cfg, resolve=True) if heldout_cfg else None}
    best_of_n = getattr(optimizer, "name", "") == "best_of_n"

    def _evaluate(work: StageWork):  # sampling and API judges' answers are journaled; the rest is redone
        heldout = None
        if heldout_cfg:
            heldout = instantiate(heldout_cfg, _partial_=True)(
                criterion=Criterion.from_config(ev.heldout_criteria) if ev.get("heldout_criteria") else criterion,
                pool=pool)
        judges = [(judge, "judge.api.max_failed_share"), (reward, "judge.api.max_failed_share"),
                  (heldout, "evaluation.heldout_judge.api.max_failed_share")]
        with _answers_journaled(judges, work.scratch / "judge_answers.jsonl"):  # raises before it is cached
            return _evaluate_with(work, heldout)

    def _evaluate_with(work: StageWork, heldout):
        tok = pool.tokenizer(cfg.policy.model)
        extra: dict[str, Any] = {}
        if best_of_n:  # n fresh reference samples per slot, the judge keeps its favourite
            n = optimizer.n
            pools = eval_gen.generate(pool.model(cfg.policy.model, eval_gen.dtype), tok, prompts, k * n,
                                      eval_seed + 7919, policy.identity, "best_of_n", f"evaluate: best-of-{n}",
                                      journal=work.journal("best_of_n"))
            if getattr(reward, "references", None):  # a comparative judge: compare with a fresh reference sample
                refs = eval_gen.generate(pool.model(cfg.policy.model, eval_gen.dtype), tok, prompts, 1,
                                         eval_seed + 104729, policy.identity, "reference", "evaluate: baseline",
                                         journal=work.journal("baseline"))
                reward.references.update({c.prompt_id: c.text for c in refs})
            pol, extra = optimizer.select(prompts, pools, reward, k)
            pol_model, kl = None, best_of_n_kl(n)
        else:
            pool.add("trained-policy", str(policy_dir), trained_id)
            pol = eval_gen.generate(pool.model("trained-policy", eval_gen.dtype), tok, prompts, k, eval_seed,
                                    trained_id, "policy", "evaluate: policy", journal=work.journal("policy"))
            pol_model, kl = pool.model("trained-policy", ev.kl_dtype), None
        samples, m = evaluate(prompts, pol, reference, judge, gold, pol_model,
                              pool.model(cfg.policy.model, ev.kl_dtype), tok, int(ev.kl_batch_size),
                              analytic_kl=kl, heldout_judge=heldout)
        m.update(extra)
        return {"eval_samples": samples, "eval_metrics": [{k: _finite_or_none(v) for k, v in m.items()}]}

    res = r.records_stage("evaluate", eval_inputs, _evaluate, {"eval_samples": EvalSample, "eval_metrics": dict})
    metrics = {k: (float("nan") if v is None else v) for k, v in res["eval_metrics"][0].items()}
    return metrics, res["eval_samples"]


class _Answers:
    """The answer log and failure count of ``_answers_journaled``'s API clients."""

    def __init__(self, log, clients: list):
        self.log, self.clients = log, clients

    def failures(self) -> int:
        return sum(c.failures for c in self.clients)

    def spent(self, accounting, before: dict | None, replayed: dict) -> dict | None:
        """``spent_since`` plus the answers of earlier attempts served from the log since ``replayed``."""
        spent = spent_since(accounting, before)
        if spent is not None:
            for k, v in self.log.journal.reused_spent.items():
                if k in spent:
                    spent[k] += v - replayed.get(k, 0)
        return spent


@contextlib.contextmanager
def _answers_journaled(judges: list[tuple[Any, str]], path: Path):
    """The labelling stage's rule (``rank_in_chunks``) for the judge requests of a later stage.

    Each usable answer of the API judges in ``judges`` ((judge or None, config key of its
    ``max_failed_share``)) is journaled at ``path`` as it arrives and served from there on a rerun,
    so a rerun sends only the requests that failed. When the body is done, more failures than
    a judge's ``max_failed_share`` raise ``RequestsFailed``, before the stage's results can be cached.
    """
    from rlaif.backends.api import AnswerLog
    from rlaif.judges.base import api_clients

    clients: list = []
    for j, setting in judges:
        for c in api_clients(j) if j is not None else []:
            if all(c is not x for x, _ in clients):
                clients.append((c, setting))
    answers = _Answers(AnswerLog(Journal(path)), [c for c, _ in clients])
    start = [(c.requests, c.failures) for c, _ in clients]
    for c, _ in clients:
        c.record_answers(answers.log)
    try:
        yield answers
    finally:
        for c, _ in clients:
            c.record_answers(None)
    for (c, setting), (requests, failures) in zip(clients, start, strict=True):
        c.check_failures(c.failures - failures, c.requests - requests, "judge requests", setting)


def run_probes(judge, prompts: list[Prompt], pairs: list[PreferencePair], items: int,
               journal: Journal | None = None) -> dict[str, float]:
    """Verbosity, injection and (comparative judges) swap probes on the first preference pairs.

    With ``journal``, each finished probe is recorded (with what it cost an API judge), so a rerun
    after a kill asks the judge only for the probes that had not finished. An API judge's answers
    are journaled one by one beside it: a probe in which a request failed is not recorded, its
    rerun sends only the failed requests, and more failures than ``judge.api.max_failed_share``
    raise ``RequestsFailed`` once every probe was tried."""
    if journal is None:
        return _probes(judge, prompts, pairs, items, None, None)
    from rlaif.judges.base import answers_journal_path

    with _answers_journaled([(judge, "judge.api.max_failed_share")], answers_journal_path(journal)) as answers:
        return _probes(judge, prompts, pairs, items, journal, answers)


def _probes(judge, prompts: list[Prompt], pairs: list[PreferencePair], items: int, journal: Journal | None,
            answers: _Answers | None) -> dict[str, float]:
    by_id = {p.id: p for p in prompts}
    pairs = pairs[:items]
    ps = [by_id[p.prompt_id] for p in pairs]
    chosen = [p.chosen[0]["content"] for p in pairs]
    rejected = [p.rejected[0]["content"] for p in pairs]
    accounting = getattr(getattr(judge, "backend", None), "accounting", None)
    items_id = [[p.prompt_id, p.chosen_index, p.rejected_index] for p in pairs]

    def probe(name: str, fn) -> dict:
        done = journal.lookup(name, items_id) if journal is not None else None
        if done is not None:
            return done[0]
        before = accounting() if accounting is not None else None
        replayed = dict(answers.log.journal.reused_spent) if answers is not None else {}
        failed = answers.failures() if answers is not None else 0
        result = {k: _finite_or_none(v) for k, v in fn().items()}
        if answers is not None and answers.failures() > failed:  # a probe with a failed request is redone
            return result
        if journal is not None:
            spent = (answers.spent(accounting, before, replayed) if answers is not None
                     else spent_since(accounting, before))
            journal.append(name, items_id, [result], spent=spent)
        return result

    probe = progress.counted(probe, progress.bar(2 if judge.pointwise else 3, "diagnostics probes", "probe"))

    def value(v):
        return float("nan") if v is None else v

    out = {}
    for k, v in probe("verbosity", lambda: verbosity_probe(judge, ps, rejected, other=chosen)).items():
        if k in ("padded_win_rate", "mean_shift", "raise_rate", "flip_rate", "score_shift", "score_shift_std"):
            out[f"judge/probe_verbosity_{k}"] = value(v)
    for k, v in probe("injection", lambda: injection_probe(judge, ps, chosen, rejected)).items():
        if k.endswith(("flip_rate", "mean_shift", "score_shift", "score_shift_std")):
            out[f"judge/probe_injection_{k.replace('/', '_')}"] = value(v)
    if not judge.pointwise:
        for k, v in probe("swap", lambda: swap_probe(judge, ps, chosen, rejected)).items():
            if k in ("position_consistency", "same_slot_rate", "max_swap_mismatch"):
                out[f"judge/probe_swap_{k.removeprefix('max_swap_')}"] = value(v)
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
        f"  KL {f('eval/kl')} nats: {s.get('eval/kl_of') or 'KL(policy || reference) per response'}",
        f"  mean length   reference {f('eval/length_reference', '{:.1f}')}  ->  policy {f('eval/length_policy', '{:.1f}')} tokens",
        f"  training spent {f('train/judge_calls', '{:.0f}')} judge calls and {f('train/generated_tokens', '{:.0f}')}"
        f" generated tokens",
        f"  preference pairs: {f('preferences/pairs', '{:.0f}')} (invalid judgments {f('judge/invalid', '{:.0f}')},"
        f" judge agrees with gold on {f('judge/pair_agreement_with_gold', '{:.0%}')} of pairs)",
        f"  precision: {s.get('precision/dtype', 'n/a')} (training autocast {s.get('precision/mixed_precision', 'n/a')})",
        "  time per stage: " + ", ".join(
            f"{st} {s[f'time/{st}_s']:.0f}s{' (cached)' if hits.get(st) else ''}" for st in stages),
        f"  run folder: {out}",
        f"  W&B: {location or 'not tracked (tracker=none)'}",
        "",
    ]
    return "\n".join(lines)
