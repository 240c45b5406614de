"""Replay: rerun an experiment from the generations and judgments an earlier run recorded, without
loading or calling any model or API for those two stages.

``replay=<run folder>`` replays that run; ``replay=true`` replays the most recent finished run
whose data, policy, generator, judge, criteria and seed equal this config's (from the run
registry, rlaif/runs.py). The replayed run reads the recorded ``prompts.jsonl``,
``candidates.jsonl``, ``judgments.jsonl`` and ``verdicts.jsonl`` (and a panel's
``judge_members.jsonl``) and runs everything after them -- preferences, diagnostics, training,
evaluation -- under the current config, reusing the cache where it can.

What replay keys on: the *recorded* run. Downstream cache keys are built from the recorded
judge and criteria config and the recorded model identities (``manifest.json``), exactly as the
original run built them, so a replay with unchanged downstream settings is a cache hit all the
way and loads no model at all -- even when ``policy.model`` or ``judge.model`` now point at a
moved folder, another server or nothing. Those location keys (``policy.model``,
``generator.model``, ``judge.model``, ``judge.api``, ...) may differ from the recorded run; they
are only used where a downstream stage has to run (training loads the policy; evaluation and
diagnostics probes call the judge). Every other key that decides the candidates or judgments
must equal the recorded one, or the replay stops before loading anything, listing the
differences: the records would not be what this config describes.

Missing records (the original run never finished generating or judging) stop the replay before
anything loads, naming the stage and the command that creates them (the original run's
command, which resumes it).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rlaif.config import ConfigError
from rlaif.io import read_jsonl, read_records
from rlaif.types import Candidate, Judgment, PairwiseVerdict, Prompt

# Sections that decide the candidates and the judgments, and their keys that only say where a
# model lives (which may change between the original run and its replay).
REPLAYED = ("data", "generator", "judge", "criteria", "seed")
LOCATION = {"policy": ("model", "prefer_hub"), "generator": ("model", "base_url", "api_key_env", "max_concurrency",
                                                             "timeout_s", "max_retries", "backoff_s",
                                                             "requests_per_minute"),
            "judge": ("model", "api", "backend", "batch_size")}
STAGE_FILES = {"generate": ("candidates.jsonl",), "judge": ("judgments.jsonl", "verdicts.jsonl")}


class ReplayError(ConfigError):
    """A replay that cannot work (missing records, a config that differs from the recorded one)."""


@dataclass
class Recorded:
    folder: Path
    config: dict[str, Any]  # the recorded run's resolved config (from its manifest)
    models: dict[str, str]  # recorded model identities: policy, judge
    prompts: list[Prompt]
    candidates: list[Candidate]
    judgments: list[Judgment]
    verdicts: list[PairwiseVerdict]
    members: dict[str, list] = field(default_factory=dict)


def original_command(folder: Path) -> str:
    """The command that created (and, rerun, resumes) the run in ``folder``."""
    overrides = folder / ".hydra" / "overrides.yaml"
    if overrides.exists():
        ov = [str(o) for o in (OmegaConf.to_container(OmegaConf.load(overrides)) or [])]
        return "rlaif " + " ".join(shlex.quote(o) for o in ov) if ov else "rlaif"
    return f"the run that wrote {folder} (its config is {folder / 'resolved_config.yaml'})"


def _strip(section: Any, drop: tuple[str, ...]) -> Any:
    return {k: v for k, v in section.items() if k not in drop} if isinstance(section, dict) else section


def differences(current: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    """Keys deciding candidates or judgments that differ between the two resolved configs."""
    out = []

    def walk(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}.{k}" if path else k)
        elif a != b:
            out.append(f"{path}: {b!r} in the recorded run, {a!r} now")

    for sec in REPLAYED:
        drop = LOCATION.get(sec, ())
        walk(_strip(current.get(sec), drop), _strip(recorded.get(sec), drop), sec)
    return out


def load_recorded(folder: str | Path, current: dict[str, Any], train_prompts: list[Prompt]) -> Recorded:
    """Read and check a recorded run; raise ``ReplayError`` before any model is loaded."""
    folder = Path(folder).expanduser()
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise ReplayError(f"replay={folder}: not a run folder (no manifest.json); give the folder of a finished "
                          "run, e.g. replay=outputs/<date>/<time>_quickstart")
    manifest = json.loads(manifest_path.read_text())
    missing = [(stage, f) for stage, files in STAGE_FILES.items() for f in files if not (folder / f).exists()]
    if missing or not (folder / "prompts.jsonl").exists():
        stage = missing[0][0] if missing else "generate"
        what = ", ".join(f for _, f in missing) or "prompts.jsonl"
        raise ReplayError(f"replay={folder}: the recorded run has no {what}: its '{stage}' stage never finished, so "
                          f"there is nothing to replay. Create it by finishing that run:\n    {original_command(folder)}\n"
                          "then replay again.")
    recorded_cfg = manifest["config"]
    diff = differences(current, recorded_cfg)
    if diff:
        raise ReplayError(f"replay={folder}: replay reuses that run's candidates and judgments, so the settings that "
                          "decide them must match it. These differ:\n  - " + "\n  - ".join(diff)
                          + "\nDrop those overrides, or run without replay to generate and judge anew.")
    prompts = read_records(folder / "prompts.jsonl", Prompt)
    rec_train = [p.to_dict() for p in prompts if p.split == "train"]
    if rec_train != [p.to_dict() for p in train_prompts]:
        raise ReplayError(f"replay={folder}: the training prompts differ from the recorded run's (the data file "
                          f"{current.get('data', {}).get('path')} changed since?); run without replay")
    members_file = folder / "judge_members.jsonl"
    members = {r["name"]: r["prefs"] for r in read_jsonl(members_file)} if members_file.exists() else {}
    return Recorded(folder=folder, config=recorded_cfg, models=dict(manifest.get("models", {})), prompts=prompts,
                    candidates=read_records(folder / "candidates.jsonl", Candidate),
                    judgments=read_records(folder / "judgments.jsonl", Judgment),
                    verdicts=read_records(folder / "verdicts.jsonl", PairwiseVerdict), members=members)
