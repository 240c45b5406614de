"""Run folders as records: finding them under a sweep, reading their files, labelling them.

A run folder holds ``summary.json`` (flat metrics), ``resolved_config.yaml``,
``.hydra/overrides.yaml`` and ``train_history.jsonl``. Reading never raises on a missing or
unreadable file: the record says what is missing in ``problem``. Labels come from the overrides
that differ between runs ("ppo target_kl=4"). This module only reads.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

RUN_CONTENTS = ("summary.json (flat metrics), resolved_config.yaml, .hydra/overrides.yaml and "
                "train_history.jsonl, as written by `rlaif` or each job of `rlaif -m ...`")


class NoRunsError(ValueError):
    """No run folder (a folder holding summary.json or Hydra's .hydra/) under the given paths."""


@dataclass
class RunRecord:
    """One run folder as read from disk. ``complete`` runs have a ``summary.json``."""

    path: Path  # the run folder
    name: str  # its path relative to the searched folder (e.g. "3" for sweep job 3)
    overrides: list[str] = field(default_factory=list)  # .hydra/overrides.yaml, as Hydra wrote them
    config: dict[str, Any] = field(default_factory=dict)  # resolved_config.yaml, flattened: {"optimizer.beta": 0.1}
    summary: dict[str, Any] = field(default_factory=dict)  # summary.json; non-finite values stored as null
    history: list[dict[str, Any]] = field(default_factory=list)  # train_history.jsonl rows
    problem: str | None = None  # why the run is incomplete; None for a complete run
    label: str = ""  # short readable label; set by load_runs from the overrides that differ

    @property
    def complete(self) -> bool:
        return self.problem is None

    @property
    def optimizer(self) -> str:
        name = self.config.get("optimizer.name") or _override_dict(self.overrides).get("optimizer")
        return str(name) if name else "n/a"

    def metric(self, key: str) -> float | None:
        """A finite number from the summary, or None (missing, null, NaN or not a number)."""
        v = self.summary.get(key)
        if key == "eval/gold_reward_gain" and v is None:  # older runs: derive it
            p, r = self.metric("eval/gold_reward_policy"), self.metric("eval/gold_reward_reference")
            v = None if p is None or r is None else p - r
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        return float(v) if math.isfinite(v) else None


# ---------------------------------------------------------------------------------------------
# Finding and reading run folders


def find_run_dirs(paths: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """(run folder, the searched folder it was found under), in natural order of their paths.

    A run folder holds ``summary.json``; a folder with Hydra's ``.hydra/`` or a
    ``resolved_config.yaml`` but no summary is a run that failed or is still running. Run folders
    are not searched further, nor are symlinks (``policy`` points into the cache).
    """
    found: list[tuple[Path, Path]] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise NoRunsError(f"{p} is not a folder. Give a sweep folder or run folders; a run folder holds {RUN_CONTENTS}.")
        if _is_run_dir(p):
            found.append((p, p.parent))
            continue
        for dirpath, dirnames, _ in os.walk(p):
            d = Path(dirpath)
            if d != p and _is_run_dir(d):
                found.append((d, p))
                dirnames[:] = []
                continue
            dirnames[:] = sorted(n for n in dirnames if n not in ("comparison", "wandb", ".hydra")
                                 and not (d / n).is_symlink())
    seen: set[Path] = set()
    unique = []
    for d, root in found:
        if d.resolve() not in seen:
            seen.add(d.resolve())
            unique.append((d, root))
    return sorted(unique, key=lambda dr: _natural_key(str(dr[0])))


def _is_run_dir(d: Path) -> bool:
    return (d / "summary.json").is_file() or (d / ".hydra").is_dir() or (d / "resolved_config.yaml").is_file()


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def read_run(path: Path, root: Path | None = None) -> RunRecord:
    """Read one run folder; what is missing or unreadable is recorded in ``problem``, never raised."""
    path = Path(path)
    name = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else path.name
    rec = RunRecord(path=path, name=name if name != "." else path.name)
    ov = path / ".hydra" / "overrides.yaml"
    if ov.is_file():
        try:
            rec.overrides = [str(o) for o in (yaml.safe_load(ov.read_text()) or [])]
        except yaml.YAMLError as e:
            log.warning("%s: unreadable overrides (%s)", ov, e)
    for cfg_file in (path / "resolved_config.yaml", path / ".hydra" / "config.yaml"):
        if cfg_file.is_file():
            try:
                rec.config = _flatten(yaml.safe_load(cfg_file.read_text()) or {})
                break
            except yaml.YAMLError as e:
                log.warning("%s: unreadable config (%s)", cfg_file, e)
    summary = path / "summary.json"
    if not summary.is_file():
        if (path / "gate_failed.json").is_file():
            rec.problem = "stopped by the judge gate (gate_failed.json)"
        else:
            rec.problem = "no summary.json: the run failed or has not finished"
    else:
        try:
            rec.summary = json.loads(summary.read_text())
            if not isinstance(rec.summary, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            rec.summary, rec.problem = {}, f"summary.json unreadable: {e}"
    hist = path / "train_history.jsonl"
    if hist.is_file():
        for i, line in enumerate(hist.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rec.history.append(json.loads(line))
                except ValueError:
                    log.warning("%s line %d is not JSON; skipped", hist, i)
    return rec


def load_runs(paths: str | Path | Sequence[str | Path]) -> list[RunRecord]:
    """Every run folder under ``paths`` (complete or not), labelled. Raises NoRunsError if none."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    dirs = find_run_dirs(paths)
    if not dirs:
        searched = ", ".join(str(Path(p).resolve()) for p in paths)
        raise NoRunsError(f"No run folders found under {searched}. A run folder holds {RUN_CONTENTS}; "
                          "give the sweep folder (e.g. outputs/multirun/<date>/<time>) or the run folders themselves.")
    runs = [read_run(d, root) for d, root in dirs]
    for run, label in zip(runs, make_labels(runs), strict=True):
        run.label = label
    return runs


def latest_sweep(root: str | Path = "outputs/multirun") -> Path:
    """The most recently changed folder under ``root`` that directly holds run folders."""
    root = Path(root)
    parents = {d.parent for d, _ in find_run_dirs([root])} if root.is_dir() else set()
    if not parents:
        raise NoRunsError(f"No sweeps found under {root.resolve()}: run `rlaif -m ...` first, or give the sweep folder.")
    return max(parents, key=lambda d: d.stat().st_mtime)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


# ---------------------------------------------------------------------------------------------
# Labels: the overrides that tell the runs apart


def _override_dict(overrides: list[str]) -> dict[str, str]:
    out = {}
    for o in overrides:
        key, sep, value = o.partition("=")
        key = key.lstrip("+~")
        if sep and not key.startswith("hydra."):
            out[key] = value
    return out


def _short_value(v: str) -> str:
    v = v.strip("'\"")
    if "/" in v.rstrip("/"):  # a path: its last part says enough
        v = v.rstrip("/").rsplit("/", 1)[-1]
    return v if len(v) <= 24 else v[:23] + "…"


def varied_overrides(runs: Sequence[RunRecord]) -> list[str]:
    """Override keys whose value is not the same in every Hydra run (a key missing from one counts).
    Runs without overrides (not launched through Hydra) are left out: they are labelled by folder."""
    dicts = [_override_dict(r.overrides) for r in runs if r.overrides]
    keys: list[str] = []
    for d in dicts:
        keys += [k for k in d if k not in keys]
    return [k for k in keys if len({d.get(k) for d in dicts}) > 1]


def _is_group(runs: Sequence[RunRecord], key: str) -> bool:
    """A config group choice (its node is a mapping in the composed config), not a plain value like seed."""
    if "." in key:
        return False
    if any(key in r.config for r in runs):  # a scalar at the top level
        return False
    return any(k.startswith(f"{key}.") for r in runs for k in r.config) or not any(r.config for r in runs)


def make_labels(runs: Sequence[RunRecord]) -> list[str]:
    """Short labels from the overrides that differ between runs: ``optimizer=ppo
    optimizer.target_kl=4`` becomes "ppo target_kl=4". Runs not told apart that way (no
    overrides, a single run) fall back to their folder name."""
    varied = varied_overrides(runs) if len(runs) > 1 else []
    groups = [k for k in varied if _is_group(runs, k)]  # optimizer=ppo -> "ppo"
    dotted = [k for k in varied if k not in groups]  # optimizer.beta=0.1 -> "beta=0.1", seed=1 -> "seed=1"
    leaves = [k.rsplit(".", 1)[-1] for k in dotted]
    short = {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(dotted, leaves, strict=True)}
    labels = []
    for r in runs:
        d = _override_dict(r.overrides)
        parts = [_short_value(d[k]) for k in groups if k in d]
        parts += [f"{short[k]}={_short_value(d[k])}" for k in dotted if k in d]
        labels.append(" ".join(parts) or r.name)
    counts = {lab: labels.count(lab) for lab in labels}
    return [f"{lab} [{r.name}]" if counts[lab] > 1 and lab != r.name else lab  # still ambiguous: say which folder
            for lab, r in zip(labels, runs, strict=True)]
