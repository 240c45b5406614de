"""Experiment tracking: Weights & Biases (offline when no API key) or nothing.

Trackers receive namespaced metrics (``generate/...``, ``judge/...``, ``train/...``,
``eval/...``), tables, and the run summary. Configs are redacted before they leave the process.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|authorization)", re.IGNORECASE)


def redact(obj: Any) -> Any:
    """Copy of a (nested) config with every secret-looking key's value replaced."""
    if isinstance(obj, dict):
        # `*_env` keys name an environment variable (e.g. api_key_env: OPENAI_API_KEY), not a secret.
        return {k: ("***" if SECRET_KEY.search(str(k)) and not str(k).endswith("_env") and v not in (None, "")
                    else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


class NullTracker:
    """``tracker=none``: keeps nothing beyond the run folder."""

    location = None

    def __init__(self, **_unused):
        pass

    def start(self, run_dir: str | Path, config: dict, name: str | None = None) -> None:
        pass

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def table(self, name: str, columns: list[str], rows: list[list]) -> None:
        pass

    def image(self, name: str, path: str | Path) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker(NullTracker):
    def __init__(self, project: str = "rlaif", entity: str | None = None, mode: str = "auto",
                 group: str | None = None, job_type: str | None = None, tags: list[str] | None = None, **_unused):
        self.project, self.entity, self.mode = project, entity, mode
        self.group, self.job_type, self.tags = group, job_type, list(tags or [])
        self.run = None
        self.location: str | None = None

    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        env = os.environ.get("WANDB_MODE")
        if env:
            return env
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"

    def start(self, run_dir, config, name=None):
        import wandb

        if os.environ.get("WANDB_MODE") == "":  # an empty value would fail wandb's own validation
            del os.environ["WANDB_MODE"]
        mode = self.resolved_mode()
        self.run = wandb.init(project=self.project, entity=self.entity, dir=str(run_dir), config=redact(config),
                              mode=mode, group=self.group, job_type=self.job_type, tags=self.tags, name=name,
                              reinit="finish_previous", settings=wandb.Settings(console="off", silent=True))
        self._step = 0
        if mode == "offline":
            self.location = f"{self.run.dir.rsplit('/files', 1)[0]} (offline; upload with `wandb sync <that folder>`)"
        else:
            self.location = self.run.url

    def log(self, metrics, step=None):
        if self.run is not None:
            self.run.log(dict(metrics))

    def table(self, name, columns, rows):
        import wandb

        if self.run is not None:
            self.run.log({name: wandb.Table(columns=columns, data=rows)})

    def image(self, name, path):
        import wandb

        if self.run is not None:
            self.run.log({name: wandb.Image(str(path))})

    def summary(self, metrics):
        if self.run is not None:
            for k, v in metrics.items():
                self.run.summary[k] = v

    def finish(self):
        if self.run is not None:
            self.run.finish()
            self.run = None
