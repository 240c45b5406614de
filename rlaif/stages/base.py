"""What a stage is: a name, the inputs its output depends on (declared once), how it computes, what
it writes and what it reports. The runner (rlaif/stages/runner.py) does everything else.

A stage's cache key is derived from its declared ``Inputs``, never assembled by hand: the values
of its config paths (minus those listed as not changing the output), the hashes of the upstream
records it reads and the identities of the models it uses. The stage *sees* only what it
declares: its config is a copy holding just those paths, and ``View`` hands out only the
declared records, models and the components built from declared config. Reading anything else
raises ``UndeclaredInput``, so an input cannot be used without being part of the key.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from omegaconf import DictConfig, OmegaConf

from rlaif.cache import stable_hash
from rlaif.io import read_jsonl, read_records, write_records

if TYPE_CHECKING:
    from rlaif.stages.context import RunContext
    from rlaif.stages.runner import Work


class UndeclaredInput(RuntimeError):
    """A stage used a config key, record or model it does not declare in its ``Inputs``."""


@dataclass(frozen=True)
class Inputs:
    """Everything a stage's output depends on.

    ``config``: dotted config paths (a subtree or a leaf). ``not_output``: paths inside those that
    the stage reads but that change none of its outputs (where a model lives, how often to
    checkpoint, a display setting); a model's location key is listed here because its identity is
    in ``models``. ``records``: upstream record lists by name (``RunContext.records``).
    ``models``: model identities by name (``RunContext.models``).
    """

    config: tuple[str, ...] = ()
    not_output: tuple[str, ...] = ()
    records: tuple[str, ...] = ()
    models: tuple[str, ...] = ()

    def plus(self, config=(), not_output=(), records=(), models=()) -> Inputs:
        return Inputs(self.config + tuple(config), self.not_output + tuple(not_output),
                      self.records + tuple(records), self.models + tuple(models))

    def merge(self, other: Inputs) -> Inputs:
        return self.plus(other.config, other.not_output, other.records, other.models)


# The components a stage can ask its View for, and the config paths each is built from.
COMPONENTS = {"policy": ("policy.model",), "judge": ("judge", "criteria"), "criterion": ("criteria",), "gold": ("data.gold",),
              "optimizer": ("optimizer",), "generator": ("generator",)}


class Stage:
    """One step of the data flow. Subclasses set ``name`` and ``INPUTS`` (or override ``inputs``
    when what they read depends on the config) and implement ``compute`` (record stages) or
    ``build`` and ``load`` (stages that write files, e.g. a trained model)."""

    name: ClassVar[str]
    INPUTS: ClassVar[Inputs] = Inputs()
    outputs: ClassVar[dict[str, type]] = {}  # record files it writes: name -> record type (dict: plain rows)
    cached: ClassVar[bool] = True  # False: cheap enough to recompute on every run (no cache entry)
    collective: ClassVar[bool] = False  # every process of a multi-process launch computes it (training)
    code: ClassVar[dict[str, Any]] = {}  # definitions in code its output depends on (e.g. an estimator), keyed too
    log_metrics: ClassVar[bool] = True  # False: the stage logs its own rows (a trainer, per step)

    def inputs(self, cfg: DictConfig) -> Inputs:
        return self.INPUTS

    def compute(self, v: View, work: Work) -> dict[str, list]:
        raise NotImplementedError

    def build(self, v: View, work: Work) -> Callable[[Path], Any]:
        """Do the work; return the function that writes the entry's files into a folder."""
        results = self.compute(v, work)
        return lambda d: [write_records(d / f"{n}.jsonl", rs) for n, rs in results.items()]

    def load(self, v: View, entry: Path) -> dict[str, Any]:
        """The stage's results from its entry (copied into the run folder by the runner)."""
        return {n: read_records(entry / f"{n}.jsonl", cls) if cls is not dict else read_jsonl(entry / f"{n}.jsonl")
                for n, cls in self.outputs.items()}

    def report(self, v: View, result: dict[str, Any]) -> dict[str, Any]:
        """Metrics for the summary and the tracker (and any tables, plots or files it writes)."""
        return {}


@dataclass
class View:
    """What one stage sees of the run: its declared config, records, models and components, plus
    the run's services (model pool, tracker, run folder), which change no output."""

    stage: Stage
    inputs: Inputs
    ctx: RunContext
    cfg: DictConfig = field(init=False)

    def __post_init__(self):
        self.cfg = declared_config(self.ctx.resolved, self.inputs.config)

    def record(self, name: str) -> list:
        if name not in self.inputs.records:
            raise UndeclaredInput(f"stage '{self.stage.name}' reads the records '{name}' without declaring them: add "
                                  f"'{name}' to its Inputs.records ({type(self.stage).__module__})")
        return self.ctx.records[name]

    def model(self, name: str) -> str:
        if name not in self.inputs.models:
            raise UndeclaredInput(f"stage '{self.stage.name}' uses the model '{name}' without declaring it: add "
                                  f"'{name}' to its Inputs.models ({type(self.stage).__module__})")
        return self.ctx.identity(name)

    def path(self, name: str) -> Path:
        """Where a declared model made by an earlier stage lives (the trained policy)."""
        self.model(name)
        return self.ctx.paths[name]

    def component(self, name: str) -> Any:
        """The run's judge, criterion, gold labeller, optimizer or generator, if the stage declares the
        config it is built from."""
        missing = [p for p in COMPONENTS[name] if not covers(p, self.inputs.config)]
        if missing:
            raise UndeclaredInput(f"stage '{self.stage.name}' uses the {name} without declaring the config it is built "
                                  f"from: add {missing} to its Inputs.config ({type(self.stage).__module__})")
        return self.ctx.component(name)

    @property
    def pool(self):
        return self.ctx.pool

    @property
    def tracker(self):
        return self.ctx.tracker

    @property
    def out(self) -> Path:
        return self.ctx.out


def covers(path: str, declared: tuple[str, ...]) -> bool:
    return any(path == d or path.startswith(d + ".") for d in declared)


def select_path(tree: Any, path: str) -> tuple[bool, Any]:
    node = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def declared_config(resolved: dict, paths: tuple[str, ...]) -> DictConfig:
    """A read-only config holding only ``paths`` of the resolved config (absent paths stay absent)."""
    tree: dict = {}
    for path in paths:
        found, value = select_path(resolved, path)
        if not found:
            continue
        node = tree
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = copy.deepcopy(value)
    cfg = OmegaConf.create(tree)
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def key_material(stage: Stage, inputs: Inputs, ctx: RunContext) -> dict[str, Any]:
    """What the stage's cache key hashes: its declared inputs' values, minus ``not_output``."""
    config = OmegaConf.to_container(declared_config(ctx.resolved, inputs.config))
    for path in inputs.not_output:
        *parents, last = path.split(".")
        found, node = select_path(config, ".".join(parents)) if parents else (True, config)
        if found and isinstance(node, dict):
            node.pop(last, None)
    return {"config": config, "code": stage.code, "records": {n: ctx.record_hash(n) for n in sorted(set(inputs.records))},
            "models": {n: ctx.identity(n) for n in sorted(set(inputs.models))}}


def stage_key(stage: Stage, inputs: Inputs, ctx: RunContext) -> str:
    return ctx.cache.key(stage.name, key_material(stage, inputs, ctx))


def leaf_paths(tree: Any, prefix: str = "") -> list[str]:
    """Every leaf of a nested dict as a dotted path (tests walk these)."""
    if not isinstance(tree, dict) or not tree:
        return [prefix] if prefix else []
    return [p for k, v in tree.items() for p in leaf_paths(v, f"{prefix}.{k}" if prefix else str(k))]


def records_hash(records: list) -> str:
    return stable_hash([r.to_dict() if hasattr(r, "to_dict") else r for r in records])
