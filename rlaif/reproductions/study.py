"""A study: several pipeline runs composed from one config, an optional analysis, and a check.

``rlaif experiment=paper/dpo_sentiment_cpu`` runs every member of ``study.runs`` (each is the
command's config plus that member's overrides, e.g. ``[optimizer=ppo, optimizer.target_kl=4]``)
into ``<study folder>/runs/<member>/``, one after another in this process, then the analysis
(``study.analysis``: a function ``(cfg, StudyData, folder) -> dict`` that may sample and score,
as best-of-n over n does) and the check (``reproduction.check``). The study folder gets:

- ``summary.json``: ``reproduction/check``, ``reproduction/passed``, each criterion's measured and
  expected value, the analysis's values, and each member's headline metrics (``runs/<member>/...``);
- ``reproduction.md``: the claim, the criteria with pass/fail, and the member table;
- ``comparison/``: the members' table and plots (``rlaif-compare``), plus the analysis's plots;
- a W&B run of its own (same tracker settings), the members' runs grouped under the study.

A member can start from an earlier member's trained policy: ``${study_run:<member>}`` in its
overrides (e.g. ``policy.model=${study_run:sl_cai}``) stands for ``<study folder>/runs/<member>/policy``.
The named member must come earlier in ``study.runs`` (members run in order); when it failed, the
later one is not run and is reported as failed; when it is retrained, the later one is too.

Every member config is composed and validated before any model loads, so a bad override fails
at once, naming the member and the key. Rerunning the same command reuses the finished members
(their config is recorded with them) and resumes an unfinished one where it stopped; a member
that fails is reported, the others still run, the check reports what is missing, and the
command exits non-zero.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import re
import sys
import time
import traceback
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pydantic import field_validator

from rlaif.config import ConfigError, check_overrides, conf_dir, validate
from rlaif.io import atomic_write_text, write_json
from rlaif.options import Options
from rlaif.reproductions.checks import CHECKS, CheckResult, StudyData, run_check
from rlaif.reproductions.checks.base import fmt_value

log = logging.getLogger(__name__)

MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,63}$")
# Member metrics copied into the study's summary (runs/<member>/<key>).
HEADLINE = ("eval/gold_reward_policy", "eval/gold_reward_reference", "eval/gold_reward_gain", "eval/win_rate",
            "eval/lc_win_rate", "eval/heldout_win_rate", "eval/heldout_lc_win_rate", "eval/kl", "eval/length_policy",
            "eval/length_reference", "train/judge_calls", "time/total_s")


STUDY_RUN = re.compile(r"\$\{study_run:\s*([^}\s]*)\s*\}")
_runs_dir: ContextVar[Path | None] = ContextVar("study_runs_dir", default=None)


def _study_run(name: str) -> str:
    """``${study_run:<member>}``: that member's trained policy folder in the study being run;
    outside a study run (composing or validating its config alone) a placeholder naming it."""
    runs_dir = _runs_dir.get()
    if runs_dir is None:
        return f"study_run:{name}"
    path = str(runs_dir / name / "policy")  # goes into a Hydra override: quoted unless plainly safe
    return path if re.fullmatch(r"[\w./-]+", path) else "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


OmegaConf.register_new_resolver("study_run", _study_run, replace=True)


def member_dependencies(runs: dict[str, list]) -> dict[str, list[str]]:
    """member -> the earlier members whose policy its overrides use (``${study_run:<member>}``);
    raises ConfigError for a name that is not an earlier member."""
    deps: dict[str, list[str]] = {}
    errors = []
    seen: list[str] = []
    for name, own in runs.items():
        deps[name] = []
        for o in own or []:
            for dep in STUDY_RUN.findall(str(o)):
                if dep not in seen:
                    where = "a later member" if dep in runs else "no member"
                    errors.append(f"study.runs.{name}: {o!r} names {where} {dep!r}; ${{study_run:...}} must name a "
                                  f"member listed before {name!r} (members run in order: {', '.join(runs)})")
                elif dep not in deps[name]:
                    deps[name].append(dep)
        seen.append(name)
    if errors:
        raise ConfigError("Invalid study member:\n  - " + "\n  - ".join(errors))
    return deps


class StudyOptions(Options):
    runs: dict[str, list[str] | None]  # member name -> its overrides (Hydra syntax); null removes a member an
    #                                    inherited config defined (a full-scale config over its CPU one)
    analysis: str | None  # "module:function" run after the members; null: none
    analysis_options: dict[str, Any]  # handed to the analysis as its second config

    @field_validator("runs")
    @classmethod
    def _names(cls, v):
        for name in v:
            if not MEMBER_NAME.match(name):
                raise ValueError(f"member name {name!r}: letters, digits and _.=- only (it names a folder)")
        return v

    @field_validator("analysis")
    @classmethod
    def _analysis(cls, v):
        if v is not None and ":" not in v:
            raise ValueError(f"{v!r}: expected 'module:function'")
        return v


class ReproductionOptions(Options):
    # name: the registry name (rlaif.reproductions.registry); a META key, not checked here
    paper: str | None
    arxiv: str | None
    scale: str | None  # cpu | full | smoke
    claim: str | None  # what a faithful reproduction must show
    check: str | None  # rlaif.reproductions.checks name
    expected: dict[str, Any]  # the check's thresholds, reported beside what was measured
    paper_numbers: dict[str, Any]  # the paper's headline numbers, reported (not checked)

    @field_validator("check")
    @classmethod
    def _known(cls, v):
        if v is not None and v not in CHECKS:
            raise ValueError(f"unknown check {v!r}; known: {', '.join(sorted(CHECKS))}")
        return v

    @field_validator("scale")
    @classmethod
    def _scale(cls, v):
        if v is not None and v not in ("cpu", "full", "smoke"):
            raise ValueError(f"{v!r} is not one of cpu, full, smoke")
        return v


def is_study(cfg: DictConfig) -> bool:
    runs = OmegaConf.select(cfg, "study.runs")
    return bool(runs) and any(v is not None for v in runs.values())


class StudyFailed(RuntimeError):
    """One or more member runs failed (the study's report was written all the same)."""


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside the `rlaif` command (Hydra's app)
        return compose("config", overrides=overrides)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=overrides)


def _base_overrides(overrides: list[str]) -> list[str]:
    """The command's overrides that members inherit (Hydra's own settings stay with the study)."""
    return [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]


def member_configs(cfg: DictConfig, overrides: list[str], group: str | None = None,
                   runs_dir: Path | None = None) -> dict[str, tuple[list[str], DictConfig]]:
    """Every member's overrides and composed, validated config; raises ConfigError naming the
    member and the problem before any model loads. ``group``: the W&B group of the members;
    ``runs_dir``: where the members' folders are (what ``${study_run:<member>}`` points into)."""
    base = _base_overrides(overrides)
    members: dict[str, tuple[list[str], DictConfig]] = {}
    errors = []
    repro = OmegaConf.select(cfg, "reproduction.name") or "study"
    member_dependencies(OmegaConf.to_container(cfg.study.runs, resolve=False))
    token = _runs_dir.set(None if runs_dir is None else Path(runs_dir).resolve())
    try:
        runs = OmegaConf.to_container(cfg.study.runs, resolve=True)
    finally:
        _runs_dir.reset(token)
    for name, own in runs.items():
        if own is None:  # removed by a config that inherits this study
            continue
        ov = base + [str(o) for o in own] + [f"name={repro}-{name}"]
        if group and OmegaConf.select(cfg, "tracker.group", default="absent") is None:  # wandb, no group given
            ov.append(f"tracker.group={group}")
        try:
            check_overrides([str(o) for o in own])
            mcfg = _compose(ov)
            validate(mcfg)
        except ConfigError as e:
            errors.append(f"study.runs.{name} ({' '.join(own) or 'no overrides'}): {e}")
            continue
        except Exception as e:  # noqa: BLE001 - Hydra's own composition errors
            errors.append(f"study.runs.{name} ({' '.join(own) or 'no overrides'}): {type(e).__name__}: {e}")
            continue
        members[name] = (ov, mcfg)
    if errors:
        raise ConfigError("Invalid study member:\n  - " + "\n  - ".join(errors))
    return members


def _member_key(mcfg: DictConfig, upstream: list[str] | None = None) -> str:
    """The member's config hash; with the keys of the members it starts from (``${study_run:...}``),
    so retraining one of those reruns it."""
    from rlaif.runs import config_hash
    from rlaif.tracking import redact

    key = config_hash(redact(OmegaConf.to_container(mcfg, resolve=True)))
    return key if not upstream else config_hash({"config": key, "starts_from": list(upstream)})


def _finished(folder: Path, key: str) -> bool:
    mark = folder / "study_member.json"
    if not (mark.is_file() and (folder / "summary.json").is_file()):
        return False
    try:
        return json.loads(mark.read_text()).get("config_hash") == key
    except (OSError, json.JSONDecodeError):
        return False


def check_analysis(cfg: DictConfig) -> None:
    """``study.analysis`` names a function that imports, and its options pass the analysis's own
    check: the function's ``validate_options`` attribute or its module's ``check_options``, where
    there is one. Runs before any member, so bad analysis options fail before any model loads."""
    spec = OmegaConf.select(cfg, "study.analysis")
    if not spec:
        return
    module, fn = spec.split(":", 1)
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"study.analysis: cannot load {spec!r} ({type(e).__name__}: {e}); give 'module:function' "
                          "of an importable module") from e
    func = getattr(mod, fn, None)
    if func is None:
        raise ConfigError(f"study.analysis: cannot load {spec!r}: {module!r} has no function {fn!r}")
    check = getattr(func, "validate_options", None) or getattr(mod, "check_options", None)
    if check is not None:
        try:
            check(OmegaConf.to_container(cfg.study.analysis_options, resolve=True))
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:
            raise ConfigError(f"Invalid study.analysis_options for {spec}: {e}") from e


def _analysis(cfg: DictConfig, data: StudyData, out: Path) -> dict[str, Any]:
    """The study's analysis (``module:function``), its values cached in analysis.json by the
    members' summaries and the analysis options."""
    spec = OmegaConf.select(cfg, "study.analysis")
    if not spec:
        return {}
    options = OmegaConf.to_container(cfg.study.analysis_options, resolve=True)
    key = json.dumps({"spec": spec, "options": options, "runs": {n: r.summary.get("time/total_s") for n, r in data.runs.items()},
                      "hashes": {n: _read_hash(r.path) for n, r in data.runs.items()}}, sort_keys=True, default=str)
    cached = out / "analysis.json"
    if cached.is_file():
        try:
            prev = json.loads(cached.read_text())
            if prev.get("key") == key:
                print(f"rlaif: study analysis {spec}: reusing {cached}", flush=True)
                return prev["values"]
        except (OSError, json.JSONDecodeError, KeyError):
            pass
    module, fn = spec.split(":", 1)
    func = getattr(importlib.import_module(module), fn)
    print(f"rlaif: study analysis {spec}", flush=True)
    values = func(cfg, data, out, options)
    write_json(cached, {"key": key, "values": values})
    return values


def _read_hash(path: Path) -> str | None:
    try:
        return json.loads((path / "study_member.json").read_text()).get("config_hash")
    except (OSError, json.JSONDecodeError):
        return None


def run_study(cfg: DictConfig, out: str | Path, overrides: list[str]) -> dict[str, Any]:
    """Run the study ``cfg`` (composed from ``overrides``) into ``out``; return its summary.

    Raises ConfigError (before anything loads) for a bad member or check; StudyFailed after the
    report when a member run failed."""
    from rlaif import pipeline
    from rlaif.comparison.runs import read_run

    t0 = time.perf_counter()
    out = Path(out)
    validate(cfg)
    repro = OmegaConf.to_container(cfg.reproduction, resolve=True) if cfg.get("reproduction") else {}
    if not repro.get("check"):
        raise ConfigError("reproduction.check: a study needs a check (one of " + ", ".join(sorted(CHECKS)) + ")")
    check_analysis(cfg)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = out / "runs"
    members = member_configs(cfg, overrides, group=f"{repro.get('name')}-{out.resolve().name}", runs_dir=runs_dir)
    deps = member_dependencies(OmegaConf.to_container(cfg.study.runs, resolve=False))
    keys: dict[str, str] = {}
    failed: dict[str, str] = {}
    print(f"rlaif: study {repro.get('name')} ({repro.get('scale') or 'n/a'} scale): {len(members)} runs into "
          f"{runs_dir}", flush=True)
    for i, (name, (ov, mcfg)) in enumerate(members.items(), 1):
        folder = runs_dir / name
        key = keys[name] = _member_key(mcfg, [keys[d] for d in deps.get(name, [])])
        if broken := [d for d in deps.get(name, []) if d in failed]:
            failed[name] = f"not run: it starts from member(s) {', '.join(broken)}, which failed"
            print(f"rlaif: study run {i}/{len(members)} {name}: {failed[name]}", file=sys.stderr, flush=True)
            continue
        if _finished(folder, key):
            print(f"rlaif: study run {i}/{len(members)} {name}: finished earlier, reused", flush=True)
            continue
        print(f"rlaif: study run {i}/{len(members)} {name}: {' '.join(ov[len(_base_overrides(overrides)):])}",
              flush=True)
        (folder / ".hydra").mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(ov)))
        (folder / "summary.json").unlink(missing_ok=True)  # another config's result must not be read as this one's
        try:
            pipeline.run(mcfg, folder)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - recorded; the other members still run
            failed[name] = f"{type(e).__name__}: {e}"
            atomic_write_text(folder / "study_error.txt", traceback.format_exc())
            print(f"rlaif: study run {name} failed: {failed[name]} (traceback in {folder / 'study_error.txt'})",
                  file=sys.stderr, flush=True)
        else:
            write_json(folder / "study_member.json", {"config_hash": key, "overrides": ov})
        gc.collect()

    data = StudyData(runs={n: read_run(runs_dir / n, runs_dir) for n in members}, folder=out)
    try:
        data.analysis = _analysis(cfg, data, out)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - the check then reports what the analysis did not measure
        failed["analysis"] = f"{type(e).__name__}: {e}"
        atomic_write_text(out / "analysis_error.txt", traceback.format_exc())
        print(f"rlaif: study analysis failed: {failed['analysis']}", file=sys.stderr, flush=True)
    result = run_check(repro["check"], data, repro.get("expected") or {})
    summary = report(cfg, out, data, result, failed, time.perf_counter() - t0)
    if failed:
        raise StudyFailed(f"{len(failed)} part(s) of the study failed ({', '.join(failed)}); the report in {out} "
                          "says what could not be checked. Rerun the same command to resume.")
    return summary


def report(cfg: DictConfig, out: Path, data: StudyData, result: CheckResult, failed: dict[str, str],
           seconds: float) -> dict[str, Any]:
    """summary.json, reproduction.md, the comparison table and plots, the W&B run; printed."""
    from hydra.utils import instantiate

    from rlaif.compare import write_comparison

    repro = OmegaConf.to_container(cfg.reproduction, resolve=True)
    summary: dict[str, Any] = {f"reproduction/{k}": repro.get(k) for k in ("name", "paper", "arxiv", "scale", "claim")}
    summary.update(result.summary())
    for k, v in (repro.get("expected") or {}).items():
        summary[f"reproduction/threshold/{k}"] = v
    for k, v in (repro.get("paper_numbers") or {}).items():
        summary[f"reproduction/paper/{k}"] = v
    for k, v in data.analysis.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            summary[f"analysis/{k}"] = v
    for name, r in data.runs.items():
        summary[f"runs/{name}/complete"] = r.complete
        for k in HEADLINE:
            if (v := r.metric(k)) is not None:
                summary[f"runs/{name}/{k}"] = v
    summary["study/runs"] = len(data.runs)
    summary["study/failed"] = sorted(failed)
    summary["time/total_s"] = round(seconds, 1)

    comparison: dict[str, Any] = {}
    if any(r.complete for r in data.runs.values()):
        try:
            comparison = write_comparison(out / "runs", out / "comparison")
        except Exception as e:  # noqa: BLE001 - a table that cannot be drawn must not hide the check
            log.warning("study: could not write the comparison: %s: %s", type(e).__name__, e)
    lines = result.lines()
    md = [f"# Reproduction: {repro.get('name')} ({repro.get('scale')} scale)", "",
          f"Paper: {repro.get('paper')} (arXiv {repro.get('arxiv')})", "", f"Claim: {repro.get('claim')}", "",
          f"**{'PASSED' if result.passed else 'FAILED'}**: {result.check}", "",
          "| criterion | measured | expected | passed |", "|---|---|---|---|"]
    md += [f"| {c.claim} | {fmt_value(c.measured)} | {c.expected} | {'yes' if c.passed else 'no'}"
           f"{' (' + c.why + ')' if c.why else ''} |" for c in result.criteria]
    if result.values:
        md += ["", "Also measured:", ""] + [f"- {k}: {fmt_value(v)}" for k, v in result.values.items()]
    if failed:
        md += ["", "Failed parts:", ""] + [f"- {k}: {v}" for k, v in failed.items()]
    if comparison.get("markdown"):
        md += ["", "## Runs", "", comparison["markdown"]]
    md += ["", f"Wall time: {seconds:.0f} s."]
    atomic_write_text(out / "reproduction.md", "\n".join(md) + "\n")
    write_json(out / "summary.json", summary)

    tracker = instantiate(cfg.tracker) if cfg.get("tracker") else None
    if tracker is not None:
        from rlaif.tracking import redact

        try:
            tracker.start(out, redact(OmegaConf.to_container(cfg, resolve=True)), f"{repro.get('name')}-study")
            tracker.table("reproduction/criteria", ["criterion", "measured", "expected", "passed"],
                          [[c.claim, fmt_value(c.measured), c.expected, c.passed] for c in result.criteria])
            for name, path in {**comparison.get("plots", {}), **{p.stem: p for p in out.glob("*.png")}}.items():
                tracker.image(f"study/{name}", path)
            tracker.summary(summary)
            tracker.finish()
            summary_location = tracker.location
        except Exception as e:  # noqa: BLE001 - the files on disk are the record
            log.warning("study: tracker failed: %s: %s", type(e).__name__, e)
            summary_location = None
    else:
        summary_location = None
    print("\n".join(["", f"== rlaif study '{repro.get('name')}' finished in {seconds:.0f} s ==", *lines,
                     f"  study folder: {out} (reproduction.md, summary.json, comparison/)",
                     f"  W&B: {summary_location or 'not tracked'}", ""]), flush=True)
    return summary
