"""The run registry: which runs of which config are unfinished, so that rerunning the same
command resumes a run instead of starting another.

Hydra gives every invocation a new timestamped folder, so "the same command" cannot find its
earlier attempt by folder. The registry keys runs by their config instead:
``<cache>/runs/<hash of the composed config>.json`` holds {output_dir, wandb_run_id, status,
pid, host, attempt, ...}. When ``run`` starts (``resume: auto``, the default) and finds an
entry for its config whose status is not ``finished`` and whose process is gone, it continues
that run: same run folder, same W&B run id, and the stage cache and journals supply the work
already done. A finished entry means a new run (which still reuses every cached stage). An entry
whose process is alive belongs to a run in progress; the new run then starts its own folder and
W&B run (and waits on the stage locks rather than duplicate work). ``resume: never`` always
starts a new run folder and W&B run.

Where the folder comes from: from the CLI, Hydra has already made a new timestamped folder; a
resumed run writes into the earlier folder instead and leaves a ``resumed_run`` link in the new
one. A caller that names the folder (``run(cfg, output_dir=...)``) resumes only a run in that
folder, and so does each job of a sweep (``-m``), whose folder belongs to its sweep; their work
is still reused through the cache and journals. With ``cache.enabled=false`` there is no
registry: rerunning into the same folder still reuses its journals and checkpoints.

Keys that do not change what a run computes or where it belongs (``resume``) are left out of the
hash; everything else, ``name`` and the tracker included, is in it. Entries are small JSON files
written atomically under a file lock.

Also here: ``interrupt_signals``, which makes SIGTERM stop a run the way Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from rlaif.cache import stable_hash
from rlaif.io import atomic_write_text

log = logging.getLogger(__name__)

NOT_IN_HASH = ("resume",)
# What the replay key leaves out: everything downstream of judging, and bookkeeping.
DOWNSTREAM = ("optimizer", "reward_model", "preferences", "budget", "evaluation", "diagnostics", "tracker", "name",
              "resume", "replay", "cache")


def config_hash(resolved: dict[str, Any]) -> str:
    return stable_hash({k: v for k, v in resolved.items() if k not in NOT_IN_HASH})[:20]


def replay_key(resolved: dict[str, Any]) -> str:
    """Hash of what decides a run's candidates and judgments (data, policy, generator, judge,
    criteria, seed): runs with equal keys can replay each other's records."""
    return stable_hash({k: v for k, v in resolved.items() if k not in DOWNSTREAM})[:20]


def _alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True  # cannot tell: assume the other machine's run is still going
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunRegistry:
    def __init__(self, root: str | Path | None):
        self.root = Path(root).expanduser() / "runs" if root else None

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / f"{key}.json"

    @contextlib.contextmanager
    def _locked(self, key: str):
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / f".{key}.lock")):
            yield

    def get(self, key: str) -> dict | None:
        if self.root is None:
            return None
        try:
            return json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None

    def claim(self, key: str, fresh: dict[str, Any], allow_resume: bool,
              folder: str | None = None) -> tuple[dict, dict | None]:
        """Register this process's run of config ``key``.

        Returns (the entry now registered, the unfinished entry it resumes or None). ``fresh`` is
        the entry for a new run (output_dir, wandb_run_id, ...); a resumed run keeps the earlier
        entry's folder and W&B id. ``folder``: resume only a run in that folder (a caller that
        chose the run folder). A run that cannot be registered (another live run holds the
        entry) is returned unregistered with ``registered: False``.
        """
        now = {"pid": os.getpid(), "host": socket.gethostname(), "status": "running", "updated": time.time()}
        if self.root is None:
            return {**fresh, **now, "attempt": 1, "registered": False}, None
        with self._locked(key):
            old = self.get(key)
            if old is not None and old.get("status") == "running" and _alive(old.get("pid", -1), old.get("host", "")):
                log.warning("run registry: a run of this config is in progress (pid %s, %s); starting a separate run",
                            old.get("pid"), old.get("output_dir"))
                return {**fresh, **now, "attempt": 1, "registered": False}, None
            resumed = None
            if (allow_resume and old is not None and old.get("status") != "finished"
                    and Path(old.get("output_dir", "")).is_dir()
                    and (folder is None or str(Path(old["output_dir"]).resolve()) == str(Path(folder).resolve()))):
                resumed = old
                entry = {**old, **now, "attempt": int(old.get("attempt", 1)) + 1}
            else:
                entry = {**fresh, **now, "attempt": 1, "started": time.time()}
            entry["registered"] = True
            atomic_write_text(self._path(key), json.dumps(entry, indent=1, sort_keys=True) + "\n")
        return entry, resumed

    def update(self, key: str, entry: dict, **fields: Any) -> None:
        """Change a registered entry (status, W&B id); a no-op for an unregistered run."""
        entry.update(fields)
        if self.root is None or not entry.get("registered"):
            return
        entry["updated"] = time.time()
        with self._locked(key):
            atomic_write_text(self._path(key), json.dumps(entry, indent=1, sort_keys=True) + "\n")

    def latest_finished(self, rkey: str) -> dict | None:
        """The most recently finished run whose replay key is ``rkey``."""
        if self.root is None or not self.root.exists():
            return None
        best = None
        for p in self.root.glob("*.json"):
            try:
                e = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if e.get("status") == "finished" and e.get("replay_key") == rkey and not e.get("replay_of"):
                if best is None or e.get("updated", 0) > best.get("updated", 0):
                    best = e
        return best


def interrupted(signum: int = signal.SIGINT) -> KeyboardInterrupt:
    """The KeyboardInterrupt a signal raises, with ``signum`` attached (a plain KeyboardInterrupt,
    not a subclass, so that an uncaught one still ends Python the way Ctrl-C does: status 130)."""
    e = KeyboardInterrupt(signal.Signals(signum).name)
    e.signum = int(signum)
    return e


@contextlib.contextmanager
def interrupt_signals():
    """While a run is going, SIGTERM raises KeyboardInterrupt like Ctrl-C does, so both go through
    the same cleanup (journals are already on disk; the tracker is finished)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise interrupted(signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
