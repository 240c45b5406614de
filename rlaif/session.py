"""Everything around a run's data flow: checking the config before anything loads, the run folder
and run registry (resume the unfinished run of the same config), the replay source, the manifest
and tracker, interrupts (Ctrl-C, SIGTERM), and the summary at the end.

Reliability (what a kill, Ctrl-C or a rerun does):

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
import logging
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlaif import distributed, precision
from rlaif.backends.vllm import check_engines, close_all, resolve_engines
from rlaif.config import ConfigError, validate
from rlaif.data import (
    PROMPT_FILE,
    DatasetSpec,
    PromptFileSpec,
    load_dataset_with_pairs,
    load_prompts_with_stats,
    prompt_token_limit,
    truncate_prompts,
)
from rlaif.io import atomic_write_text, write_json, write_records
from rlaif.journal import Progress
from rlaif.manifest import build_manifest, scrub_hydra_dir
from rlaif.models import ModelPool
from rlaif.replay import Recorded, ReplayError, load_recorded
from rlaif.runs import RunRegistry, config_hash, interrupt_signals, replay_key
from rlaif.stages.context import RunContext
from rlaif.stages.runner import link_atomic
from rlaif.tracking import new_run_id, redact
from rlaif.types import Prompt

log = logging.getLogger(__name__)


def finite_or_none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


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


def prepare(cfg: DictConfig, output_dir) -> tuple[DictConfig, dict]:
    """The config checked and its ``auto`` dtypes resolved (on a copy), before anything loads."""
    if output_dir is None:  # Hydra wrote .hydra/ (the overrides verbatim) before this ran: mask secrets first
        scrub_hydra_dir(hydra_output_dir(), OmegaConf.to_container(cfg, resolve=False))
    validate(cfg)
    cfg = copy.deepcopy(cfg)  # the caller's config keeps its "auto"s
    auto_dtypes = precision.resolve_config(cfg)  # every dtype: auto becomes this machine's choice, before any key
    on_vllm = resolve_engines(cfg)  # every engine: auto becomes the run's (vllm where generator=vllm)
    if errors := check_engines(cfg, on_vllm):
        raise ConfigError("Invalid config:\n  - " + "\n  - ".join(errors))
    check_reliability_keys(cfg)
    if errors := distributed.check(cfg):
        raise ConfigError("Invalid config for a multi-process launch:\n  - " + "\n  - ".join(errors))
    distributed.init()
    if not distributed.is_main():  # process 0 reports; the others only warn
        logging.getLogger("rlaif").setLevel(logging.WARNING)
    else:
        precision.announce(auto_dtypes)
    return cfg, auto_dtypes


def load_data(cfg: DictConfig) -> tuple[list[Prompt], dict]:
    prompts, _, stats = load_data_and_pairs(cfg)
    return prompts, stats


def load_data_and_pairs(cfg: DictConfig) -> tuple[list[Prompt], list[dict], dict]:
    """The prompts (split, fitted to the policy's context), the dataset's labelled pairs of those
    prompts (``data.format`` with pairs; none for a prompt file) and the ``data/*`` counts."""
    d = cfg.data
    if d.get("format", PROMPT_FILE) == PROMPT_FILE:
        spec = {k: d[k] for k in PromptFileSpec.__dataclass_fields__ if k != "path"}
        (prompts, stats), pairs = load_prompts_with_stats(d.path, **spec), []
    else:
        values = {k: d[k] for k in DatasetSpec.__dataclass_fields__}
        values["prefix_words"] = tuple(values["prefix_words"])
        prompts, pairs, stats = load_dataset_with_pairs(DatasetSpec(**values))
    prompts, stats["data/truncated_prompts"] = _fit_prompts(cfg, prompts)
    return prompts, pairs, stats


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


class RecordedModel:
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


def replay_source(cfg: DictConfig, resolved: dict, registry: RunRegistry, train_prompts) -> Recorded | None:
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


class Session:
    """One run's folder, registry entry and tracker, from claiming the folder to the summary.

    ``with Session(...) as ctx:`` claims the run folder (a new one, or the unfinished run of this
    config: ``resume: auto``), writes the resolved config and prompts, and yields the RunContext;
    an interrupt or failure leaves the registry, progress.json and tracker saying so.
    """

    def __init__(self, cfg: DictConfig, output_dir, prompts: list[Prompt]):
        self.cfg, self.prompts = cfg, prompts
        self.main = distributed.is_main()  # another process of a multi-process launch keeps nothing
        self.name = cfg.name or hydra_choice("experiment") or "rlaif"
        self.resolved = redact(OmegaConf.to_container(cfg, resolve=True))
        self.registry = RunRegistry(cfg.cache.dir if cfg.cache.enabled and self.main else None)
        self.train_prompts = [p for p in prompts if p.split == "train"]
        self.recorded = replay_source(cfg, self.resolved, self.registry, self.train_prompts)  # nothing loaded
        self.key = config_hash(self.resolved)
        self.fresh_out = self.hydra_out = Path(output_dir) if output_dir else hydra_output_dir()
        if not self.main:  # a scratch run folder, removed at the end; process 0 writes the run's
            self.fresh_out = Path(tempfile.mkdtemp(prefix=f"rlaif-rank{distributed.rank()}-"))
        fresh = {"output_dir": str(self.fresh_out.resolve()), "wandb_run_id": new_run_id(), "config_hash": self.key,
                 "replay_key": replay_key(self.resolved), "name": self.name,
                 "replay_of": str(self.recorded.folder) if self.recorded else None}
        any_folder = output_dir is None and hydra_sweep() is None  # sweeps keep their own job folders
        self.entry, self.resumed = self.registry.claim(self.key, fresh, allow_resume=cfg.get("resume", "auto") == "auto",
                                                       folder=None if any_folder else fresh["output_dir"])
        self.out = Path(self.entry["output_dir"])
        self.ctx: RunContext | None = None

    @contextlib.contextmanager
    def opened(self):
        try:
            with interrupt_signals():
                yield self._open()
        except KeyboardInterrupt as e:
            self._interrupted(e)
            raise
        except BaseException:
            if not self.main:
                shutil.rmtree(self.out, ignore_errors=True)
                raise
            self.registry.update(self.key, self.entry, status="failed")
            if self.ctx is not None:
                self.ctx.progress.set(status="failed")
                with contextlib.suppress(Exception):
                    self.ctx.tracker.finish(exit_code=1)
            raise
        finally:
            if self.ctx is not None and self.ctx.pool.engines:  # vLLM engines go together (they share state)
                close_all(self.ctx.pool)

    def _open(self) -> RunContext:
        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        attempt = Progress.previous_attempt(out) + 1 if self.resumed else 1
        if self.resumed:
            print(f"rlaif: resuming the unfinished run of this config in {out} (attempt {attempt}, W&B run "
                  f"{self.entry['wandb_run_id']}); finished work is reused from the cache", flush=True)
            if self.fresh_out.resolve() != out.resolve() and self.fresh_out.is_dir():
                link_atomic(out, self.fresh_out / "resumed_run")  # Hydra's new folder points at the run it continues
        atomic_write_text(out / "resolved_config.yaml", OmegaConf.to_yaml(OmegaConf.create(self.resolved)))
        self.ctx = RunContext(self.cfg, out, Progress(out, attempt), sweep=hydra_sweep())
        self.attempt = attempt
        write_records(out / "prompts.jsonl", self.prompts)
        return self.ctx

    def start_tracking(self, models: dict[str, str], auto_dtypes: dict) -> None:
        """The manifest (what ran, on what, with which precision) and the tracker's run."""
        ctx, rec = self.ctx, self.recorded
        manifest = build_manifest(self.resolved, models, redact(OmegaConf.to_container(self.cfg.criteria, resolve=True)),
                                  int(self.cfg.seed))
        manifest["run"] = {"attempt": self.attempt, "resumed": self.resumed is not None,
                           "processes": distributed.world_size(), "wandb_run_id": self.entry["wandb_run_id"],
                           "replay_of": str(rec.folder) if rec else None}
        manifest["precision"] = {**precision.detect().as_dict(), "auto_keys": auto_dtypes}
        write_json(self.out / "manifest.json", manifest)
        ctx.tracker.start(self.out, {**self.resolved, "manifest": {k: v for k, v in manifest.items() if k != "config"}},
                          self.name, run_id=self.entry["wandb_run_id"], resume=self.resumed is not None)
        if ctx.tracker.run_id and ctx.tracker.run_id != self.entry["wandb_run_id"]:
            self.registry.update(self.key, self.entry, wandb_run_id=ctx.tracker.run_id)

    def _interrupted(self, e: KeyboardInterrupt) -> None:
        signum = getattr(e, "signum", 2)
        ctx = self.ctx
        stage = ctx.progress.state.get("stage") if ctx is not None else None
        self.registry.update(self.key, self.entry, status="interrupted")
        if ctx is not None:
            ctx.progress.set(status="interrupted")
            with contextlib.suppress(Exception):
                ctx.tracker.finish(exit_code=128 + int(signum))
        where = ctx.cache.root if ctx is not None and ctx.cache.enabled else self.out
        if not self.main:  # process 0 says how to resume
            shutil.rmtree(self.out, ignore_errors=True)
            return
        print(f"\nrlaif: interrupted; rerun the same command to resume (stopped in the '{stage}' stage; finished "
              f"batches and checkpoints are kept under {where}; the run folder is {self.out})", file=sys.stderr,
              flush=True)

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Write and print the summary, finish the tracker and mark the run finished."""
        from rlaif.summary import format_summary

        ctx = self.ctx
        summary = {k: finite_or_none(v) for k, v in summary.items()}
        if not self.main:  # the summary of the entries process 0 computed; process 0 writes and prints it
            shutil.rmtree(self.out, ignore_errors=True)
            if self.hydra_out.is_dir() and not (self.hydra_out / "resolved_config.yaml").exists():
                shutil.rmtree(self.hydra_out, ignore_errors=True)
            return summary
        write_json(self.out / "summary.json", summary)
        ctx.tracker.summary(summary)
        location = ctx.tracker.location
        ctx.tracker.finish()
        ctx.progress.set(status="finished", stage=None)
        self.registry.update(self.key, self.entry, status="finished")
        print(format_summary(self.name, summary, self.out, location, ctx.hits))
        return summary


def hydra_output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def hydra_sweep() -> str | None:
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


def hydra_choice(group: str) -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get(group)
    except ValueError:
        return None
