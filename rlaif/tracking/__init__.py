"""Experiment tracking: Weights & Biases (offline when no API key) or nothing.

Trackers receive namespaced metrics (``generate/...``, ``judge/...``, ``train/...``,
``eval/...``), tables, and the run summary. Configs are redacted before they leave the process.

A run that resumes after an interruption passes the id of the run it continues (``run_id``,
recorded in the run registry, rlaif/runs.py) with ``resume=True``: W&B then continues that run
(``wandb.init(id=..., resume="allow")``). Offline, each attempt writes its own
``offline-run-<time>-<id>`` folder under ``<run folder>/wandb/``; ``wandb sync`` of all of them
uploads them in order into the one run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

# What counts as a secret (key names, URL credentials, key formats, secret environment values)
# is decided in rlaif/manifest.py, so the run folder, W&B and the manifest redact alike.
from rlaif.manifest import redact, redacted_argv  # noqa: F401 - `redact` is re-exported
from rlaif.options import Options

log = logging.getLogger(__name__)


def new_run_id() -> str:
    """A fresh run id in W&B's format (8 characters of [a-z0-9])."""
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _own_wandb_service() -> None:
    """Do not attach to a W&B service inherited from a parent process (``WANDB_SERVICE`` names the
    process that started it): that service may still hold the run we resume, from an attempt that
    was killed, and would refuse the id as "in use". A service of our own knows no such run."""
    service = os.environ.get("WANDB_SERVICE", "")
    parts = service.split("-")
    if len(parts) > 1 and parts[1].isdigit() and int(parts[1]) != os.getpid():
        del os.environ["WANDB_SERVICE"]


class NullOptions(Options):
    """``tracker=none`` has no options (conf/tracker/none.yaml)."""

    CONF: ClassVar[str] = "tracker/none"


class NullTracker:
    """``tracker=none``: keeps nothing beyond the run folder."""

    location = None
    run_id: str | None = None
    Options: ClassVar[type[Options]] = NullOptions

    def __init__(self, **options):
        self.options = NullOptions.build(options, "tracker")

    def start(self, run_dir: str | Path, config: dict, name: str | None = None, run_id: str | None = None,
              resume: bool = False) -> None:
        self.run_id = run_id

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def table(self, name: str, columns: list[str], rows: list[list]) -> None:
        pass

    def image(self, name: str, path: str | Path) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def finish(self, exit_code: int | None = None) -> None:
        pass


class WandbOptions(Options):
    """``tracker=wandb``: every option, documented with its default in conf/tracker/wandb.yaml."""

    CONF: ClassVar[str] = "tracker/wandb"
    project: str
    entity: str | None
    mode: Literal["auto", "online", "offline", "disabled"]
    group: str | None  # null: one per sweep (set by the run)
    job_type: str | None  # null: the optimizer's name in a sweep
    tags: list[str]


class WandbTracker(NullTracker):
    Options = WandbOptions

    def __init__(self, **options):
        self.options = o = WandbOptions.build(options, "tracker")
        self.project, self.entity, self.mode = o.project, o.entity, o.mode
        self.group, self.job_type, self.tags = o.group, o.job_type, list(o.tags)
        self.run = None
        self.location: str | None = None

    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        env = os.environ.get("WANDB_MODE")
        if env:
            return env
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"

    def start(self, run_dir, config, name=None, run_id=None, resume=False):
        """Start (or, with ``resume``, continue) the W&B run ``run_id`` (a new id when None)."""
        import wandb

        if os.environ.get("WANDB_MODE") == "":  # an empty value would fail wandb's own validation
            del os.environ["WANDB_MODE"]
        mode = self.resolved_mode()
        if resume:
            _own_wandb_service()
        with redacted_argv():  # W&B records sys.argv ("args" in wandb-metadata.json)
            self.run = wandb.init(project=self.project, entity=self.entity, dir=str(run_dir), config=redact(config),
                                  mode=mode, group=self.group, job_type=self.job_type, tags=self.tags, name=name,
                                  id=run_id, resume="allow" if resume else None,
                                  reinit="finish_previous", settings=wandb.Settings(console="off", silent=True))
        self.run_id = self.run.id
        self._step = 0
        if mode == "offline" and resume:  # one folder per attempt: sync them all, they go into the one run
            self.location = (f"{self.run.dir.rsplit('/files', 1)[0]} (offline, resumed; upload every attempt with "
                             f"`wandb sync {Path(run_dir) / 'wandb'}/offline-run-*-{self.run.id}`)")
        elif mode == "offline":
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

    def finish(self, exit_code=None):
        """Flush and close the run; a non-zero ``exit_code`` marks an interrupted or failed attempt."""
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
