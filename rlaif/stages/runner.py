"""The runner: what every stage gets without writing it.

For each stage: its inputs are declared (rlaif/stages/base.py) and its key derived from them; a
replayed stage takes its records from the recorded run; otherwise the cache entry is reused when
complete, or computed under the entry's lock, journaling into a scratch folder that survives a
kill (a rerun skips finished batches) and is removed once the entry is complete. In a
multi-process launch process 0 computes the per-item stages and the others read its entries,
while training stages are computed by every process together. The runner also enters the stage
in progress.json, times it, copies its records into the run folder, and logs its metrics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from rlaif import distributed
from rlaif.io import write_records
from rlaif.journal import Journal
from rlaif.stages.base import Stage, UndeclaredInput, View, covers, select_path, stage_key
from rlaif.stages.context import RunContext

log = logging.getLogger(__name__)


class Work:
    """What a stage's computation gets besides its inputs: journals in the stage's scratch folder."""

    def __init__(self, ctx: RunContext, stage: str, scratch: Path, key: str):
        self.ctx, self.stage, self.scratch, self.key = ctx, stage, scratch, key

    def journal(self, name: str) -> Journal:
        """``<scratch>/<name>.jsonl``: finished batches survive a kill; counts go to progress.json."""
        return self.ctx.progress.journal(self.stage, self.scratch / f"{name}.jsonl")


def run_stage(ctx: RunContext, stage: Stage, timer: str | None = None) -> dict[str, Any]:
    """Run (or reuse, or replay) one stage; return its results, recorded in ``ctx`` under their
    names, after logging the metrics its ``report`` gives (kept in ``ctx.summary``)."""
    with ctx.timed(timer or stage.name):
        inputs = stage.inputs(ctx.cfg)
        v = View(stage, inputs, ctx)
        ctx.progress.enter(stage.name)
        try:
            if stage.name in ctx.replayed:
                result = _replayed(ctx, stage)
            elif not stage.cached:
                result = stage.compute(v, Work(ctx, stage.name, ctx.out, ""))
            else:
                key = stage_key(stage, inputs, ctx)
                entry = computed_once(ctx, stage.name, key, lambda work: stage.build(v, work), stage.collective)
                result = stage.load(v, entry)
                for name in stage.outputs:
                    copy_atomic(entry / f"{name}.jsonl", ctx.out / f"{name}.jsonl")
                result["entry"], result["key"] = entry, key
                if ctx.hits[stage.name] and stage.outputs:
                    ctx.progress.cached(stage.name, len(result[next(iter(stage.outputs))]))
            ctx.add(**{n: result[n] for n in stage.outputs if n in result})
            metrics = stage.report(v, result)
        except (ConfigAttributeError, ConfigKeyError) as e:
            if e.full_key and select_path(ctx.resolved, e.full_key)[0] and not covers(e.full_key, inputs.config):
                raise UndeclaredInput(f"stage '{stage.name}' read config key '{e.full_key}', which its Inputs do not "
                                      f"declare ({type(stage).__module__}): {e.msg}") from e
            raise
    if metrics and stage.log_metrics:
        ctx.tracker.log(metrics)
    ctx.summary.update(metrics or {})
    return result


def _replayed(ctx: RunContext, stage: Stage) -> dict[str, list]:
    """A replayed stage: the recorded run's records, written to this run folder as a computed stage's are."""
    records = ctx.replayed[stage.name]
    for name, rows in records.items():
        write_records(ctx.out / f"{name}.jsonl", rows)
    ctx.hits[stage.name] = True
    ctx.progress.cached(stage.name, len(next(iter(records.values()), [])))
    log.info("%s: replayed from the recorded run", stage.name)
    return dict(records)


def scratch_folder(ctx: RunContext, stage: str, key: str) -> Path:
    """A folder that survives a kill (journals, checkpoints) until the stage's entry is complete."""
    return ctx.cache.scratch(stage, key) if ctx.cache.enabled else ctx.out / "checkpoints" / stage / key


def computed_once(ctx: RunContext, stage: str, key: str, build: Callable[[Work], Callable[[Path], Any]],
                  collective: bool = False) -> Path:
    """The cache entry of (stage, key): reused when complete, else computed under the entry's lock.

    ``build(work)`` does the work (journaling into ``work``'s scratch folder) and returns the
    function that writes the entry's files. The scratch folder is removed once the entry is
    complete. Another run computing the same entry is waited for, then reused.
    """
    if distributed.enabled() and (not ctx.main or collective):
        return _computed_by_all(ctx, stage, key, build, collective)  # process 0's other stages: as in one process
    hit = ctx.cache.get(stage, key)
    if hit is None:
        with ctx.cache.lock(stage, key):
            hit = ctx.cache.get(stage, key)  # another run may have finished it while we waited
            if hit is None:
                scratch = scratch_folder(ctx, stage, key)
                write = build(Work(ctx, stage, scratch, key))
                hit = ctx.cache.put(stage, key, write)
                shutil.rmtree(scratch, ignore_errors=True)
                if not ctx.cache.enabled:  # leave no empty checkpoints/<stage>/ folders in the run folder
                    for parent in (scratch.parent, scratch.parent.parent):
                        with contextlib.suppress(OSError):
                            parent.rmdir()
                ctx.hits[stage] = False
                return hit
    ctx.hits[stage] = True
    log.info("%s: reusing cached results (%s)", stage, hit)
    return hit


def _computed_by_all(ctx: RunContext, stage: str, key: str, build, collective: bool) -> Path:
    """``computed_once`` in a multi-process launch, for the processes other than 0 (which read process
    0's entry) and for a training stage, which every process computes together (process 0 keeps it)."""
    if not collective:
        hit = distributed.wait_for_entry(ctx.cache, stage, key)
        ctx.hits[stage] = True
        return hit
    # Everyone trains. Process 0 holds the entry's lock (another launch may be computing it) and
    # tells the others whether the entry already exists.
    with ctx.cache.lock(stage, key) if ctx.main else contextlib.nullcontext():
        hit = ctx.cache.get(stage, key) if ctx.main else None
        if distributed.broadcast(hit is not None):
            ctx.hits[stage] = True
            return hit if ctx.main else distributed.wait_for_entry(ctx.cache, stage, key)
        scratch = scratch_folder(ctx, stage, key)  # the same folder on every process: checkpoints are shared
        write = build(Work(ctx, stage, scratch, key))
        if ctx.main:
            hit = ctx.cache.put(stage, key, write)
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            with tempfile.TemporaryDirectory(prefix=f"rlaif-rank{distributed.rank()}-{stage}-") as tmp:
                write(Path(tmp))  # trains beside process 0; what it writes is dropped
            hit = distributed.wait_for_entry(ctx.cache, stage, key)
    ctx.hits[stage] = False
    return hit


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy a file so that ``dst`` is either the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # what a plain copy would get, not mkstemp's 0600
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def link_atomic(target: Path, link: Path) -> None:
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
