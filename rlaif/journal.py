"""Progress inside a stage, so that a killed run resumes where it stopped.

A stage's finished output appears in the cache in one step (rlaif/cache.py); until then its
work is recorded batch by batch in *journals*: append-only JSONL files in the stage's scratch
folder (``<cache>/checkpoints/<stage>/<key>/``). Each line is one finished batch -- its number,
the items it covers and their records -- written with a single ``write`` and fsynced before the
next batch starts. On a rerun the finished batches are read back and skipped. A line torn by a
kill (no newline, or not JSON) is ignored, and so is a line whose items are not the items that
batch covers now (the batching changed), so a journal can hold stale work but never wrong work.

Nothing here decides what a batch computes: callers make each batch depend only on its own
inputs and on (seed, batch number), so that skipping finished batches gives exactly the
results of an uninterrupted run.

``Progress`` keeps ``<run folder>/progress.json`` current: the stage the run is in, the items
each stage reused (from a journal or the cache) and computed, and the training checkpoint it
resumed from. People read it to see where a run is; the fault-injection test reads it to know
where it killed a run; the summary reports the counts as ``resume/<stage>_reused`` and
``resume/<stage>_computed``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from rlaif.io import atomic_write_text

log = logging.getLogger(__name__)


def _plain(items: Any) -> Any:
    """Items as they read back from JSON (tuples become lists), so they compare equal."""
    return json.loads(json.dumps(items, sort_keys=True))


class Journal:
    """Finished batches of one piece of a stage's work (one JSONL file)."""

    def __init__(self, path: str | Path, on_change=None):
        self.path = Path(path)
        self.reused = 0  # items read back from the journal in this process
        self.computed = 0  # items computed (and journaled) in this process
        self.torn = 0  # lines that could not be read (a kill mid-write)
        # What the batches read back had cost when they were computed (API requests, tokens, dollars):
        # added to this process's own spend, a resumed run reports what all its attempts spent.
        self.reused_spent: dict[str, float] = {}
        self._on_change = on_change
        self._entries: dict[Any, dict] = self._load()
        self._fresh_line_checked = False

    def _load(self) -> dict[Any, dict]:
        if not self.path.exists():
            return {}
        entries: dict[Any, dict] = {}
        for line in self.path.read_bytes().split(b"\n"):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                self.torn += 1
                continue
            if isinstance(row, dict) and "batch" in row and "items" in row and "records" in row:
                entries.setdefault(json.dumps(row["batch"]), row)  # the first complete line of a batch wins
            else:
                self.torn += 1
        if self.torn:
            log.info("%s: ignored %d unreadable line(s) (a run was killed while writing)", self.path, self.torn)
        return entries

    @property
    def finished_items(self) -> int:
        """Items in the journal's readable lines (what a rerun can reuse)."""
        return sum(len(row["items"]) for row in self._entries.values())

    def lookup(self, batch: Any, items: list) -> list[dict] | None:
        """The records of ``batch`` if it was finished for exactly these ``items``, else None."""
        row = self._entries.get(json.dumps(batch))
        if row is None or row["items"] != _plain(items):
            return None
        self.reused += len(row["items"])
        for k, v in (row.get("spent") or {}).items():
            self.reused_spent[k] = self.reused_spent.get(k, 0) + v
        self._changed()
        return row["records"]

    def append(self, batch: Any, items: list, records: list[dict], spent: dict[str, float] | None = None) -> None:
        """Record a finished batch durably (one write, then fsync) before the next one starts.
        ``spent``: what computing it cost (API accounting), counted again when a rerun reuses it."""
        row = {"batch": batch, "items": _plain(items), "records": records}
        if spent:
            row["spent"] = spent
        data = (json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the umask applies, as for open()
        try:
            if not self._fresh_line_checked:
                # A line torn by a kill has no newline: end it, so it stays one ignorable line.
                size = os.fstat(fd).st_size
                if size:
                    with open(self.path, "rb") as f:
                        f.seek(size - 1)
                        if f.read(1) != b"\n":
                            data = b"\n" + data
                self._fresh_line_checked = True
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        self._entries.setdefault(json.dumps(batch), row)
        self.computed += len(items)
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


class Progress:
    """``<run folder>/progress.json``: where this run is and what it reused or computed.

    ``stages[<stage>]`` = {"reused": items read back from a journal, "computed": items computed
    by this process, "cached": items of a stage taken whole from the cache}; ``train`` (and
    ``reward_model``, for a distilled reward model) = {"resumed_from": checkpoint folder or null,
    "resumed_step": int}. ``attempt`` counts the processes that have worked on this run folder.
    """

    def __init__(self, out: Path, attempt: int = 1):
        self.path = Path(out) / "progress.json"
        self.state: dict[str, Any] = {"pid": os.getpid(), "attempt": attempt, "status": "running", "stage": None,
                                      "stages": {}, "train": {}, "started": time.time()}
        self._journals: dict[str, list[Journal]] = {}
        self.write()

    @staticmethod
    def previous_attempt(out: Path) -> int:
        try:
            return int(json.loads((Path(out) / "progress.json").read_text()).get("attempt", 0))
        except (OSError, ValueError):
            return 0

    def write(self) -> None:
        self.state["updated"] = time.time()
        try:
            atomic_write_text(self.path, json.dumps(self.state, indent=1, sort_keys=True) + "\n")
        except OSError as e:  # progress is informational: never stop a run for it
            log.debug("could not write %s: %s", self.path, e)

    def enter(self, stage: str) -> None:
        self.state["stage"] = stage
        self.state["stages"].setdefault(stage, {"reused": 0, "computed": 0, "cached": 0})
        self.write()

    def cached(self, stage: str, items: int) -> None:
        self.state["stages"].setdefault(stage, {"reused": 0, "computed": 0, "cached": 0})["cached"] = items
        self.write()

    def journal(self, stage: str, path: Path) -> Journal:
        """A journal whose counts are reported under ``stage``."""
        j = Journal(path, on_change=lambda: self._sync(stage))
        self._journals.setdefault(stage, []).append(j)
        return j

    def _sync(self, stage: str) -> None:
        js = self._journals.get(stage, [])
        s = self.state["stages"].setdefault(stage, {"reused": 0, "computed": 0, "cached": 0})
        s["reused"], s["computed"] = sum(j.reused for j in js), sum(j.computed for j in js)
        self.write()

    def set(self, **fields: Any) -> None:
        self.state.update(fields)
        self.write()

    def counters(self) -> dict[str, float]:
        """``resume/<stage>_reused`` and ``resume/<stage>_computed`` for the summary."""
        out: dict[str, float] = {}
        for stage, s in self.state["stages"].items():
            if s.get("reused") or s.get("computed"):
                out[f"resume/{stage}_reused"] = s["reused"]
                out[f"resume/{stage}_computed"] = s["computed"]
        for stage in ("reward_model", "train"):
            step = (self.state.get(stage) or {}).get("resumed_step")
            if step is not None:
                out[f"resume/{stage}_resumed_step"] = step
        return out


def spent_since(accounting, before: dict[str, float] | None) -> dict[str, float] | None:
    """What ``accounting()`` (an API backend's counters) grew by since ``before``; None without one."""
    if accounting is None or before is None:
        return None
    now = accounting()
    return {k: v - before.get(k, 0) for k, v in now.items() if isinstance(v, (int, float))}


def add_spent(accounting: dict[str, float], journals) -> dict[str, float]:
    """This process's ``accounting`` plus what the batches its ``journals`` read back had cost."""
    out = dict(accounting)
    for j in journals:
        for k, v in (getattr(j, "reused_spent", None) or {}).items():
            if k in out:
                out[k] += v
    return out
