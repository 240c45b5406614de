"""The run context: what the stages of one run share (config, run folder, cache, models, tracker)
and what they have produced so far (records by name, model identities, metrics)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlaif import distributed
from rlaif.backends.vllm import run_engine
from rlaif.cache import StageCache
from rlaif.journal import Progress
from rlaif.models import ModelPool
from rlaif.stages.base import records_hash
from rlaif.tracking import NullTracker


class RunContext:
    """One run's shared state. Records and identities are set by name as the stages produce them;
    a component or identity may be given as a function, called the first time a stage needs it
    (a replay whose stages are all cache hits never loads or even resolves a model)."""

    def __init__(self, cfg: DictConfig, out: Path, progress: Progress | None = None, sweep: str | None = None):
        self.cfg, self.out = cfg, out
        self.resolved: dict = OmegaConf.to_container(cfg, resolve=True)  # what stages see and keys hash
        self.progress = progress or Progress(out)
        self.cache = StageCache(cfg.cache.dir, cfg.cache.enabled)
        self.pool = ModelPool(cfg.cache.dir, cfg.policy.prefer_hub, cfg.policy.trust_remote_code,
                              cfg.policy.allow_pickle)
        self.pool.vllm = dict(self.resolved.get("vllm") or {})  # engine settings, where a component runs on vLLM
        self.pool.engine = run_engine(cfg)
        self.main = distributed.is_main()  # False: another process of a multi-process launch (rlaif/distributed.py)
        self.tracker = instantiate(cfg.tracker) if self.main else NullTracker()
        if sweep is not None:  # one W&B group per sweep, one job type per optimizer
            if getattr(self.tracker, "group", "absent") is None:
                self.tracker.group = sweep
            if getattr(self.tracker, "job_type", "absent") is None:
                self.tracker.job_type = str(cfg.optimizer.name)
        self.records: dict[str, list] = {}
        self.replayed: dict[str, dict[str, list]] = {}  # stage -> its records from a recorded run (replay)
        self.times: dict[str, float] = {}
        self.hits: dict[str, bool] = {}
        self.summary: dict[str, Any] = {}  # metrics of every stage, in the order they were reported
        self._hashes: dict[str, str] = {}
        self._models: dict[str, str | Callable[[], str]] = {}
        self.paths: dict[str, Path] = {}  # folders of models made by the run (the trained policy)
        self._components: dict[str, Any] = {}

    def add(self, **records: list) -> None:
        for name, rows in records.items():
            self.records[name] = rows
            self._hashes.pop(name, None)

    def record_hash(self, name: str) -> str:
        if name not in self._hashes:
            self._hashes[name] = records_hash(self.records[name])
        return self._hashes[name]

    def set_model(self, name: str, identity: str | Callable[[], str]) -> None:
        self._models[name] = identity

    def identity(self, name: str) -> str:
        value = self._models[name]
        if callable(value):
            value = self._models[name] = value()
        return value

    def set_component(self, name: str, value: Any) -> None:
        self._components[name] = value

    def component(self, name: str) -> Any:
        return self._components.get(name)

    @contextlib.contextmanager
    def timed(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            key = f"time/{name}_s"
            self.times[key] = round(self.times.get(key, 0.0) + time.perf_counter() - t, 2)
