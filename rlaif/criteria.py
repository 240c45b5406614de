"""Criteria: what "better" means, with the wording each judge kind needs.

A criterion is data, composed from ``conf/criteria/<name>.yaml``. Judges read only the part for
their kind; ``Criterion.require`` says clearly which key is missing when a criterion lacks the
wording for a judge kind, so the combination fails at config validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Which wording each judge kind reads from a criterion.
REQUIRED_WORDING = {
    "contrastive": ["contrastive.positive", "contrastive.negative"],
    "pairwise": ["pairwise.question"],
    "rule": [],
}


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
        return [k for k in REQUIRED_WORDING.get(kind, []) if not self.get(k)]

    def require(self, kind: str) -> None:
        missing = self.missing_for(kind)
        if missing:
            raise ValueError(
                f"criteria '{self.name}' has no wording for the {kind} judge: missing "
                + ", ".join(f"criteria.{m}" for m in missing)
                + f". Add them to conf/criteria/{self.name}.yaml or choose another judge/criteria."
            )
