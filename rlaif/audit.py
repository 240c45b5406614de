"""Judge audit: how far can a judge be trusted on labelled pairs?

``rlaif-audit`` runs one or more judge configs (``audit.judges``) over labelled pairs (a JSONL
file with prompt / chosen / rejected / optional criterion, a dataset in one of the layouts of
rlaif/data/formats.py with ``audit.data.format`` -- hh_rlhf, tldr, ultrafeedback -- from the hub or
a local copy, or a Hugging Face dataset through a documented mapping), under each pair's criterion, and reports per judge and criterion: accuracy
and Cohen's kappa against the labels (ties excluded, and with inconsistent verdicts as ties),
position consistency and same-slot rate (comparative judges), P(prefer longer), accuracy split by
whether the better response is the longer one, calibration, and the verbosity, injection and
swap probes. Results go to ``audit.json`` in the run folder and a printed table.

Which response is shown as "a" is decided per pair by a seeded coin, so the gold labels are
balanced between the two slots and a slot-biased judge cannot look accurate.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlaif.config import ConfigError, conf_dir, group_options
from rlaif.criteria import Criterion
from rlaif.data import PromptFileError, require_columns, resolve_path
from rlaif.diagnostics import (
    agreement,
    calibration,
    injection_probe,
    length_bias,
    position_bias,
    swap_probe,
    verbosity_probe,
)
from rlaif.io import read_jsonl_numbered, write_json
from rlaif.manifest import scrub_hydra_dir
from rlaif.models import ModelPool
from rlaif.precision import detect as detect_precision
from rlaif.types import PairwiseVerdict, Prompt

log = logging.getLogger(__name__)

# Hugging Face datasets with a known layout -> how to read (prompt, chosen, rejected) from a row.
HF_MAPPINGS = {
    # allenai/reward-bench (split "filtered"): prompt, chosen, rejected, subset
    "reward_bench": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "criterion": None},
    # lmsys/mt_bench_human_judgments (split "human"): conversation_a/b, winner in model_a/model_b/tie;
    # first-turn answers, ties dropped.
    "mt_bench": {"kind": "mt_bench"},
}


def load_labelled_pairs(source: DictConfig | dict) -> list[dict[str, Any]]:
    """Rows with prompt, chosen, rejected, criterion (may be None), id, from a file or a hub dataset."""
    src = OmegaConf.to_container(source, resolve=True) if isinstance(source, DictConfig) else dict(source)
    if src.get("path") and src.get("format"):  # a hub dataset's layout (rlaif/data/formats.py), hub or local copy
        from rlaif.data import load_pairs

        return load_pairs(src["path"], src["format"], split=src.get("split") or "train", criterion=src.get("criterion"),
                          limit=src.get("limit"), hf_name=src.get("hf_name"), hf_data_dir=src.get("hf_data_dir"))
    if src.get("path"):
        path = resolve_path(src["path"])
        if not path.exists():
            raise PromptFileError(f"labelled pair file {path} does not exist (audit.data.path)")
        rows = read_jsonl_numbered(path)
        if not rows:
            raise PromptFileError(f"{path}: the labelled pair file is empty")
        out = []
        for i, (lineno, r) in enumerate(rows, start=1):
            missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(r.get(k), str) or not r.get(k)]
            if missing:
                raise PromptFileError(
                    f"{path}:{lineno}: no text in {', '.join(repr(k) for k in missing)} (each row needs prompt, "
                    f"chosen and rejected); this row's fields are: {', '.join(map(str, r)) or 'none'}")
            out.append({"id": str(r.get("id", i)), "prompt": r["prompt"], "chosen": r["chosen"],
                        "rejected": r["rejected"], "criterion": r.get("criterion"), "length": r.get("length")})
        return out
    if src.get("hf_dataset"):
        from datasets import load_dataset

        mapping = HF_MAPPINGS.get(src.get("mapping") or "", {})
        ds = load_dataset(src["hf_dataset"], split=src.get("split", "train"))
        where = f"dataset {src['hf_dataset']} (split {src.get('split', 'train')})"
        if mapping.get("kind") == "mt_bench":
            require_columns(ds.column_names, {c: c for c in ("winner", "conversation_a", "conversation_b")}, where,
                            "audit.data.mapping=mt_bench")
        else:
            m = {**HF_MAPPINGS["reward_bench"], **(src.get("fields") or {})}
            require_columns(ds.column_names, {k: m.get(k) for k in ("prompt", "chosen", "rejected", "criterion")},
                            where, "audit.data.fields (e.g. +audit.data.fields={prompt: question})")
        out = []
        for i, r in enumerate(ds):
            if mapping.get("kind") == "mt_bench":
                if r.get("turn", 1) != 1 or r["winner"] not in ("model_a", "model_b"):
                    continue
                a, b = r["conversation_a"][1]["content"], r["conversation_b"][1]["content"]
                chosen, rejected = (a, b) if r["winner"] == "model_a" else (b, a)
                out.append({"id": str(i), "prompt": r["conversation_a"][0]["content"], "chosen": chosen,
                            "rejected": rejected, "criterion": src.get("criterion")})
            else:
                out.append({"id": str(i), "prompt": r[m["prompt"]], "chosen": r[m["chosen"]], "rejected": r[m["rejected"]],
                            "criterion": r.get(m["criterion"]) if m.get("criterion") else src.get("criterion")})
            if src.get("limit") and len(out) >= src["limit"]:
                break
        return out
    raise ConfigError("audit.data: set path (a JSONL file) or hf_dataset (with mapping reward_bench or mt_bench)")


def _judge_config(cfg: DictConfig, name: str) -> DictConfig:
    options = group_options("judge")
    if name not in options:
        raise ConfigError(f"audit.judges: unknown judge '{name}'. Valid choices: {', '.join(options)}")
    fresh = OmegaConf.load(conf_dir() / "judge" / f"{name}.yaml")
    if fresh.get("_target_") == cfg.judge.get("_target_") and fresh.get("kind") == cfg.judge.get("kind"):
        return cfg.judge  # the composed `judge` group, with its command-line overrides (e.g. judge.api=...)
    merged = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    merged.judge = fresh
    return merged.judge


def _criterion(name: str) -> Criterion:
    options = group_options("criteria")
    if name not in options:
        raise ConfigError(f"labelled pairs use criterion '{name}', which is not in conf/criteria ({', '.join(options)})")
    return Criterion.from_config(OmegaConf.load(conf_dir() / "criteria" / f"{name}.yaml"))


def judge_rows(judge, rows: list[dict], seed: int = 0) -> dict[str, list]:
    """Judge every row once (both orders for comparative judges); the raw material of the metrics."""
    rng = random.Random(seed)
    flips = [rng.random() < 0.5 for _ in rows]  # True: the better response is shown as b
    prompts = [Prompt(r["id"], r["prompt"], [{"role": "user", "content": r["prompt"]}], "audit") for r in rows]
    a = [r["rejected"] if f else r["chosen"] for r, f in zip(rows, flips, strict=True)]
    b = [r["chosen"] if f else r["rejected"] for r, f in zip(rows, flips, strict=True)]
    raw: dict[str, list] = {"rows": list(rows), "gold": [0.0 if f else 1.0 for f in flips],
                            "len_a": [len(x.split()) for x in a], "len_b": [len(x.split()) for x in b]}
    if getattr(judge, "pointwise", True):
        raw["prefs"] = judge.prefer(prompts, a, b)
        raw["orders"] = []
    else:
        orders = judge.compare(prompts, a, b)
        raw["orders"] = list(orders)
        raw["prefs"] = [None if f is None or s is None else 0.5 * (f + s) for f, s in orders]
    return raw


def merge_raw(parts: list[dict[str, list]]) -> dict[str, list]:
    return {k: [x for p in parts for x in p[k]] for k in parts[0]} if parts else {}


def raw_metrics(raw: dict[str, list]) -> dict[str, Any]:
    """Every label-based metric from judged rows (see the module docstring)."""
    rows, prefs, gold, orders = raw["rows"], raw["prefs"], raw["gold"], raw["orders"]
    out: dict[str, Any] = {"n_pairs": len(rows), "invalid": sum(p is None for p in prefs)}
    if orders:
        verdicts = [PairwiseVerdict(str(i), 0, 1, f, s, "", "") for i, (f, s) in enumerate(orders)]
        pos = position_bias(verdicts)
        out.update({k: pos[k] for k in ("position_consistency", "same_slot_rate", "first_slot_share") if k in pos})
        cal = calibration(prefs, gold)
        if "calibration_error" in cal:
            out["calibration_error"] = cal["calibration_error"]
    agree = agreement(orders if orders else prefs, gold)
    out.update({k: v for k, v in agree.items() if k != "n_invalid"})
    valid = [(p, g) for p, g in zip(prefs, gold, strict=True) if p is not None and p != 0.5]
    out["accuracy_averaged"] = sum((p > 0.5) == (g > 0.5) for p, g in valid) / len(valid) if valid else None
    lb = length_bias(prefs=prefs, len_a=raw["len_a"], len_b=raw["len_b"])
    if "p_prefer_longer" in lb:
        out["p_prefer_longer"] = lb["p_prefer_longer"]
    by_len: dict[str, list[bool]] = defaultdict(list)  # is the better response the longer one?
    for r, p, g in zip(rows, prefs, gold, strict=True):
        if p is None or p == 0.5:
            continue
        lc, lr = len(r["chosen"].split()), len(r["rejected"].split())
        kind = r.get("length") or ("longer" if lc >= 1.2 * lr else "shorter" if lr >= 1.2 * lc else "similar")
        by_len[kind].append((p > 0.5) == (g > 0.5))
    for kind, hits in sorted(by_len.items()):
        out[f"accuracy_when_better_is_{kind}"] = sum(hits) / len(hits)
    return out


def probe_metrics(judge, rows: list[dict], items: int) -> dict[str, float]:
    """Verbosity, injection and (comparative judges) swap probes on the first ``items`` rows."""
    k = min(items, len(rows))
    if k == 0:
        return {}
    prompts = [Prompt(r["id"], r["prompt"], [{"role": "user", "content": r["prompt"]}], "audit") for r in rows[:k]]
    better, worse = [r["chosen"] for r in rows[:k]], [r["rejected"] for r in rows[:k]]
    out: dict[str, float] = {}
    vp = verbosity_probe(judge, prompts, worse, other=better)
    out.update({f"probe_verbosity_{m}": v for m, v in vp.items() if m in ("padded_win_rate", "mean_shift", "raise_rate")})
    ip = injection_probe(judge, prompts, better, worse)
    out.update({f"probe_injection_{m.replace('/', '_')}": v for m, v in ip.items() if m.endswith(("flip_rate", "mean_shift"))})
    if not getattr(judge, "pointwise", True):
        sp = swap_probe(judge, prompts, better, worse)
        if "max_swap_mismatch" in sp:
            out["probe_swap_max_mismatch"] = sp["max_swap_mismatch"]
    return out


def run_audit(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    out = Path(output_dir)
    scrub_hydra_dir(out, OmegaConf.to_container(cfg, resolve=False))  # Hydra's .hydra/ holds overrides verbatim
    out.mkdir(parents=True, exist_ok=True)
    a = cfg.audit
    names = list(a.judges)
    judge_cfgs = {n: _judge_config(cfg, n) for n in names}  # unknown names fail before any model loads
    rows = load_labelled_pairs(a.data)
    by_crit: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_crit[r.get("criterion") or cfg.criteria.name].append(r)
    criteria = {c: _criterion(c) for c in by_crit}
    pool = ModelPool(cfg.cache.dir, cfg.policy.prefer_hub, cfg.policy.trust_remote_code)
    report: dict[str, Any] = {"data": OmegaConf.to_container(a.data, resolve=True), "n_pairs": len(rows), "judges": {},
                              "precision": detect_precision().as_dict()}  # what dtype: auto resolved to
    for name in names:
        t = time.perf_counter()
        per: dict[str, Any] = {}
        raws, probes = [], {}
        for crit_name, crit_rows in by_crit.items():
            judge = instantiate(judge_cfgs[name], _partial_=True)(criterion=criteria[crit_name], pool=pool)
            raw = judge_rows(judge, crit_rows, int(cfg.seed))
            probes[crit_name] = probe_metrics(judge, crit_rows, int(a.probe_items))
            per[crit_name] = {**raw_metrics(raw), **probes[crit_name]}
            raws.append(raw)
            log.info("audit %s / %s: accuracy %s", name, crit_name, per[crit_name].get("accuracy_averaged"))
        overall = raw_metrics(merge_raw(raws))
        overall.update(_mean_probes(probes, {c: len(r) for c, r in by_crit.items()}))
        report["judges"][name] = {"by_criterion": per, "all": overall, "time_s": round(time.perf_counter() - t, 1)}
    write_json(out / "audit.json", report)
    print(format_audit(report))
    return report


def _mean_probes(probes: dict[str, dict[str, float]], sizes: dict[str, int]) -> dict[str, float]:
    """Probe rates over all criteria, weighted by each criterion's number of pairs."""
    total: dict[str, float] = defaultdict(float)
    weight: dict[str, float] = defaultdict(float)
    for crit, m in probes.items():
        for k, v in m.items():
            total[k] += v * sizes[crit]
            weight[k] += sizes[crit]
    return {k: total[k] / weight[k] for k in total if weight[k]}


COLUMNS = [("accuracy_averaged", "acc"), ("accuracy", "acc(S2)"), ("cohen_kappa", "kappa"),
           ("position_consistency", "pos.cons"), ("same_slot_rate", "same-slot"), ("first_slot_share", "slot1"),
           ("p_prefer_longer", "P(longer)"), ("accuracy_when_better_is_longer", "acc|longer"),
           ("accuracy_when_better_is_shorter", "acc|shorter"), ("probe_verbosity_padded_win_rate", "verbose"),
           ("probe_injection_this_flip_rate", "inject"), ("invalid", "invalid")]


def format_audit(report: dict[str, Any]) -> str:
    lines = []
    for name, res in report["judges"].items():
        lines.append(f"\n== judge '{name}' ({res['time_s']} s) ==")
        lines.append(f"{'criterion':<20}{'n':>5}" + "".join(f"{h:>12}" for _, h in COLUMNS))
        rows = list(res["by_criterion"].items()) + [("ALL", res["all"])]
        for crit, m in rows:
            cells = []
            for key, _ in COLUMNS:
                v = m.get(key)
                cells.append(f"{'-':>12}" if v is None else f"{v:>12.0f}" if key == "invalid" else f"{v:>12.3f}")
            lines.append(f"{crit:<20}{m.get('n_pairs', 0):>5}" + "".join(cells))
    return "\n".join(lines) + "\n"
