"""Content-addressed cache of stage outputs.

A stage's key is the hash of everything that can change its output (stage name and code
version, the relevant config, model identities, seed, and the hashes of its input records).
An entry is a folder ``<root>/<stage>/<key>/`` that becomes visible only when complete: it is
built under a temporary name and renamed into place, so a killed run or two runs writing the
same entry at once never leave a corrupt entry behind.

Work in progress on an entry lives in its *scratch* folder, ``<root>/checkpoints/<stage>/<key>/``
(journals of finished batches, training checkpoints; see rlaif/journal.py), which survives a
kill and is removed once the entry is complete. One process at a time computes an entry:
``lock(stage, key)`` is an OS file lock (released by the kernel when its holder dies), so a
second run of the same config waits for the first and then reuses its entry instead of writing
the same journals and checkpoints at once. Temporary folders left by killed processes are
removed by the next ``put`` of the same stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from rlaif.io import DiskFullError, give_plain_modes, is_disk_full, make_temp_dir

log = logging.getLogger(__name__)

# Bump a stage's version when its code changes what it produces for the same inputs.
# judge 3: judged in chunks of prompts (resumable), panel members' preferences kept as records.
STAGE_VERSIONS = {"generate": 1, "judge": 3, "preferences": 1, "train": 1, "evaluate": 2, "diagnostics": 1}


def stable_hash(obj: Any) -> str:
    payload = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class StageCache:
    def __init__(self, root: str | Path | None, enabled: bool = True):
        self.root = Path(root).expanduser() if root else None
        self.enabled = enabled and self.root is not None

    def key(self, stage: str, inputs: dict[str, Any]) -> str:
        return stable_hash({"stage": stage, "version": STAGE_VERSIONS.get(stage, 0), "inputs": inputs})[:24]

    def path(self, stage: str, key: str) -> Path:
        assert self.root is not None
        return self.root / "stages" / stage / key

    def scratch(self, stage: str, key: str) -> Path:
        """Where work on an entry survives a kill until the entry is complete."""
        assert self.root is not None
        return self.root / "checkpoints" / stage / key

    @contextlib.contextmanager
    def lock(self, stage: str, key: str):
        """Hold the entry's lock while computing it (a no-op when caching is disabled)."""
        if not self.enabled:
            yield
            return
        from filelock import FileLock, Timeout

        path = self.root / "locks" / f"{stage}-{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0.5)
        except Timeout:
            log.warning("%s: another run is computing this stage (lock %s); waiting for it to finish", stage, path)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def get(self, stage: str, key: str) -> Path | None:
        if not self.enabled:
            return None
        p = self.path(stage, key)
        return p if (p / "COMPLETE").exists() else None

    def put(self, stage: str, key: str, build) -> Path:
        """Create the entry by calling ``build(tmp_dir)``; returns the entry's final path.

        When caching is disabled the entry is still built, in a scratch folder of the system temp
        dir, so callers have one code path.
        """
        if not self.enabled:  # build into a scratch folder; never read or write the cache
            final = Path(tempfile.mkdtemp(prefix=f"rlaif-{stage}-")) / key
        else:
            final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_temps(final.parent)
        tmp = make_temp_dir(final.parent, prefix=f".{key}.tmp-{_owner()}-")
        try:
            build(tmp)
            (tmp / "COMPLETE").write_text("ok\n")
            give_plain_modes(tmp)  # readable by whoever shares the cache, as a plain write would be
            try:
                os.rename(tmp, final)
            except OSError:
                # Someone else finished the same entry first (same key => same content).
                if (final / "COMPLETE").exists():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    shutil.rmtree(final, ignore_errors=True)
                    os.rename(tmp, final)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_disk_full(e) and not isinstance(e, DiskFullError):  # e.g. save_pretrained, copyfile
                raise DiskFullError(getattr(e, "filename", None) or tmp, e, f"cache entry {stage}/{key}") from e
            raise
        return final


def _owner() -> str:
    """Who builds a temp folder: host and process id, so leftovers of dead processes can be found."""
    return f"{socket.gethostname().replace('-', '_')}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_temps(folder: Path) -> None:
    """Delete ``.<key>.tmp-<host>-<pid>-*`` folders whose process on this host is gone (killed mid-build)."""
    host = socket.gethostname().replace("-", "_")
    for p in folder.glob(".*.tmp-*"):
        parts = p.name.split(".tmp-", 1)[1].split("-")
        if len(parts) >= 3 and parts[0] == host and parts[1].isdigit() and not _alive(int(parts[1])):
            shutil.rmtree(p, ignore_errors=True)
