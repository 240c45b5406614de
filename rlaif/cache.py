"""Content-addressed cache of stage outputs.

A stage's key is the hash of everything that can change its output (stage name and code
version, the relevant config, model identities, seed, and the hashes of its input records).
An entry is a folder ``<root>/<stage>/<key>/`` that becomes visible only when complete: it is
built under a temporary name and renamed into place, so a killed run or two runs writing the
same entry at once never leave a corrupt entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

# Bump a stage's version when its code changes what it produces for the same inputs.
STAGE_VERSIONS = {"generate": 1, "judge": 2, "preferences": 1, "train": 1, "evaluate": 2, "diagnostics": 1}


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
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key}.tmp-"))
        try:
            build(tmp)
            (tmp / "COMPLETE").write_text("ok\n")
            try:
                os.rename(tmp, final)
            except OSError:
                # Someone else finished the same entry first (same key => same content).
                if (final / "COMPLETE").exists():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    shutil.rmtree(final, ignore_errors=True)
                    os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final
