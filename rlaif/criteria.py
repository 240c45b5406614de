"""Criteria: what "better" means, with the wording each judge kind needs.

A criterion is data, composed from ``conf/criteria/<name>.yaml``. Judges read only the part for
their kind; ``Criterion.require`` says clearly which key is missing when a criterion lacks the
wording for a judge kind, so the combination fails at config validation.

Besides per-kind wording a criterion may carry

* ``principles``: a list of short principles (a constitution). Principle-aware judges sample one
  per comparison (or per prompt, for pointwise scoring) with ``Criterion.principle_for``: a seeded,
  hash-based choice, so reruns and both orders of one comparison see the same principle;
* ``few_shot``: ``[{prompt, chosen, rejected}]`` examples that prompt-based judges prepend
  (``Criterion.few_shot_text``).

Several criteria at once: ``weighted_criteria`` reads ``[{name, weight}]`` entries (names are
``conf/criteria`` files) for ``rlaif.judges.MultiCriterionJudge``, which scores every criterion
with the same judge kind and aggregates with the weights.
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf


@functools.cache
def required_wording() -> dict[str, tuple[str, ...]]:
    """Which wording each judge kind reads from a criterion, as each judge class declares it
    (``Judge.wording``). The keys are the valid ``judge.kind`` values: the kinds of the judges that
    conf/judge/*.yaml name by ``_target_`` and of every imported Judge class, so a new kind is its
    class's file plus its YAML. Kinds that read no wording: rule judges, the reward model (its
    criterion is in its weights), the panels (whose members check their own wording)."""
    from hydra.utils import get_class

    import rlaif.judges  # noqa: F401 - the built-in kinds
    from rlaif.config import conf_dir
    from rlaif.judges.base import Judge

    kinds: dict[str, tuple[str, ...]] = {}
    for path in sorted((conf_dir() / "judge").glob("*.yaml")):
        target = OmegaConf.load(path).get("_target_")
        if target:
            cls = get_class(target)
            kinds[cls.kind] = tuple(cls.wording)
    stack = list(Judge.__subclasses__())
    while stack:
        cls = stack.pop()
        stack += cls.__subclasses__()
        kinds.setdefault(cls.kind, tuple(cls.wording))
    return kinds


def worded_kinds() -> tuple[str, ...]:
    """Judge kinds whose wording lives under a top-level key of the criterion (what a criterion
    "claims" to support)."""
    return tuple(k for k, v in required_wording().items() if v)


@dataclass
class Criterion:
    name: str
    description: str
    wording: dict[str, Any] = field(default_factory=dict)  # per judge kind, e.g. {"contrastive": {...}}

    @classmethod
    def from_config(cls, cfg: DictConfig | dict) -> Criterion:
        d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        name = d.pop("name")
        description = d.pop("description", "")
        return cls(name=name, description=description, wording=d)

    def get(self, dotted: str) -> Any:
        node: Any = self.wording
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def missing_for(self, kind: str) -> list[str]:
        return [k for k in required_wording().get(kind, ()) if not self.get(k)]

    def require(self, kind: str) -> None:
        missing = self.missing_for(kind)
        if missing:
            raise ValueError(
                f"criteria '{self.name}' has no wording for the {kind} judge: missing "
                + ", ".join(f"criteria.{m}" for m in missing)
                + f". Add them to conf/criteria/{self.name}.yaml or choose another judge/criteria."
            )

    def claimed_kinds(self) -> list[str]:
        """Judge kinds this criterion has a wording section for (complete or not)."""
        return [k for k in worded_kinds() if k in self.wording]

    # -- constitution ------------------------------------------------------------------------------
    @property
    def principles(self) -> list[str]:
        ps = self.wording.get("principles") or []
        if not isinstance(ps, list) or not all(isinstance(p, str) and p.strip() for p in ps):
            raise ValueError(f"criteria '{self.name}': principles must be a list of non-empty strings")
        return ps

    def principle_for(self, seed: int, *key: str) -> str | None:
        """One principle, chosen by (seed, key) alone; None when the criterion has no principles.

        The choice hashes its inputs (not Python's randomised ``hash``), so it is the same in every
        process. Judges pass the prompt and the *unordered* pair of responses as the key, so both
        orders of a comparison, and reruns, see the same principle while different pairs vary.
        """
        ps = self.principles
        if not ps:
            return None
        h = hashlib.sha256("\x1f".join([str(seed), *key]).encode()).digest()
        return random.Random(int.from_bytes(h[:8], "big")).choice(ps)

    # -- few-shot examples -------------------------------------------------------------------------
    @property
    def few_shot(self) -> list[dict[str, str]]:
        ex = self.wording.get("few_shot") or []
        for i, e in enumerate(ex):
            if not isinstance(e, dict) or not all(isinstance(e.get(k), str) for k in ("prompt", "chosen", "rejected")):
                raise ValueError(f"criteria '{self.name}': few_shot[{i}] needs string fields prompt, chosen, rejected")
        return ex

    def few_shot_text(self) -> str:
        """The examples as a text block to put before the task ("" when there are none)."""
        ex = self.few_shot
        if not ex:
            return ""
        parts = ["Examples of a better and a worse response under this criterion:"]
        for i, e in enumerate(ex, 1):
            parts.append(f"Example {i}\nTask: {e['prompt']}\nBetter response: {e['chosen']}\n"
                         f"Worse response: {e['rejected']}")
        return "\n\n".join(parts) + "\n\n"


def load_criterion(name: str) -> Criterion:
    """``conf/criteria/<name>.yaml`` as a Criterion (no Hydra composition needed: criteria are flat)."""
    from rlaif.config import conf_dir, group_options

    path = conf_dir() / "criteria" / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown criteria '{name}'; choose one of {', '.join(group_options('criteria'))}")
    return Criterion.from_config(OmegaConf.load(path))


def weighted_criteria(entries) -> list[tuple[Criterion, float]]:
    """Read ``[{name: helpfulness, weight: 1.0}, ...]`` (or Criterion objects / (criterion, weight)
    tuples / inline criterion dicts with a ``weight``) into (Criterion, weight) pairs."""
    if isinstance(entries, (DictConfig,)) or OmegaConf.is_list(entries):
        entries = OmegaConf.to_container(entries, resolve=True)
    out: list[tuple[Criterion, float]] = []
    for e in entries or []:
        if isinstance(e, tuple):
            crit, w = e
        elif isinstance(e, Criterion):
            crit, w = e, 1.0
        elif isinstance(e, str):
            crit, w = load_criterion(e), 1.0
        elif isinstance(e, dict):
            e = dict(e)
            w = e.pop("weight", 1.0)
            crit = load_criterion(e["name"]) if set(e) == {"name"} else Criterion.from_config(e)
        else:
            raise TypeError(f"cannot read a weighted criterion from {e!r}")
        crit = crit if isinstance(crit, Criterion) else load_criterion(crit)
        if not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
            raise ValueError(f"criteria '{crit.name}': weight must be a number >= 0, got {w!r}")
        out.append((crit, float(w)))
    if not out:
        raise ValueError("give at least one criterion, e.g. criteria: [{name: helpfulness, weight: 1.0}]")
    if sum(w for _, w in out) <= 0:
        raise ValueError("the criteria weights sum to 0; give at least one positive weight")
    names = [c.name for c, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"criteria listed twice: {names}")
    return out


def wording_problems(judge_cfg, criterion: Criterion) -> list[str]:
    """What the configured judge would miss in ``criterion`` -- for a panel, what each member
    would miss; for a multi-criterion judge, what its member would miss in each listed criterion.

    For config validation before any model loads: a member's kind is its ``kind`` key, or the
    ``kind`` of its ``_target_`` class (imported, not instantiated). Empty when all is there.
    """
    d = OmegaConf.to_container(judge_cfg, resolve=True) if OmegaConf.is_config(judge_cfg) else dict(judge_cfg or {})
    kind = d.get("kind")
    if kind is None and d.get("_target_"):
        try:
            from hydra.utils import get_class

            kind = getattr(get_class(d["_target_"]), "kind", None)
        except Exception as e:  # noqa: BLE001 - any import failure is reported as a config problem
            return [f"cannot import judge _target_ '{d['_target_']}': {e}"]
    if kind == "panel":
        out = []
        for i, member in enumerate(d.get("members") or []):
            out += [f"judge.members[{i}]: {p}" for p in wording_problems(member, criterion)]
        return out
    if kind == "multi_criterion":
        try:
            components = weighted_criteria(d.get("criteria") or [criterion])
        except (ValueError, TypeError) as e:
            return [f"judge.criteria: {e}"]
        out = []
        for crit, _ in components:
            out += [f"judge.judge: {p}" for p in wording_problems(d.get("judge") or {}, crit)]
        return out
    missing = criterion.missing_for(kind) if kind else []
    if not missing:
        return []
    return [f"criteria '{criterion.name}' has no wording for judge kind '{kind}' (missing "
            + ", ".join(f"criteria.{m}" for m in missing)
            + f"); add it to conf/criteria/{criterion.name}.yaml or pick another judge"]
