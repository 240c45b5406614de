"""Analysis of experiment=paper/rlaif_labeler: the AI labeler audited on human-labelled pairs
(Lee et al. 2023, arXiv:2309.00267v2, §2.1.1, Tables 2-4, App. B).

For each labeler variant (``analysis_options.variants``: a judge config of conf/judge plus its
options, e.g. the pairwise judge with the Detailed preamble, few-shot examples or chain of thought)
it judges the labelled pairs (``analysis_options.pairs``: a JSONL path, or an ``audit.data``
mapping for a hub dataset; the audit's seeded coin decides which
response is shown first, so the human labels are balanced between the slots) and returns counts,
not verdicts, from which the check computes alignment with its confidence interval and the slot
tests:

- ``aligned`` / ``n``: pairs where the label -- the argmax of the both-order averaged distribution
  for comparative judges, the higher score for pointwise ones -- is the human-preferred response
  (the paper's AI labeler alignment); ``ties`` are averaged labels at exactly 1/2 (not aligned);
- ``averaged``: the 2x2 table of (label picks the first-shown response, the human label does):
  ``lf_gf``, ``lf_gs``, ``ls_gf``, ``ls_gs``; the same for the single-order label read from the
  first ordering alone (``single_order``). A label free of slot preference disagrees with the
  human label as often in one direction as the other (McNemar);
- ``single_order_first``: of all 2n single-order labels (both orderings), how many chose slot 1;
- ``invariance``: the first ``invariance_pairs`` pairs judged again with the presentation swapped;
  ``agree`` counts those whose averaged label picks the same response, ``max_mismatch`` the
  largest |P(a) - (1 - P'(b))| between the two presentations (0 when the texts are really swapped);
- ``position_consistency``, ``same_slot_rate``, ``first_slot_share`` (rlaif.diagnostics).

Few-shot examples are taken from the pairs of the same criterion and then left out of the pairs
scored by *every* variant, so all variants are measured on the same items and no example is also
a test item. The analysis loads the judge model once (the study's pool); it trains nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlaif.config import ConfigError, group_options
from rlaif.diagnostics import position_bias
from rlaif.reproductions.checks import StudyData

log = logging.getLogger(__name__)

OPTION_KEYS = {"pairs", "criteria", "limit_per_criterion", "few_shot_examples", "invariance_pairs", "variants", "seed"}
VARIANT_KEYS = {"judge", "options", "few_shot", "max_pairs"}
TIE_TOL = 1e-6


def check_options(options: dict) -> None:
    """Bad analysis options fail here, naming the key, before any model loads."""
    unknown = set(options) - OPTION_KEYS
    if unknown:
        raise ConfigError(f"study.analysis_options: unknown key(s) {sorted(unknown)}; known: {sorted(OPTION_KEYS)}")
    variants = options.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ConfigError("study.analysis_options.variants: give at least one labeler variant, e.g. "
                          "{base: {judge: pairwise}, detailed: {judge: pairwise, options: {detailed: true}}}")
    judges = group_options("judge")
    for name, v in variants.items():
        where = f"study.analysis_options.variants.{name}"
        if not isinstance(v, dict) or "judge" not in v:
            raise ConfigError(f"{where}: needs judge: <a conf/judge name> (one of {', '.join(judges)})")
        bad = set(v) - VARIANT_KEYS
        if bad:
            raise ConfigError(f"{where}: unknown key(s) {sorted(bad)}; known: {sorted(VARIANT_KEYS)}")
        if v["judge"] not in judges:
            raise ConfigError(f"{where}.judge: unknown judge {v['judge']!r}; choose one of {', '.join(judges)}")
        if v.get("max_pairs") is not None and (not isinstance(v["max_pairs"], int) or v["max_pairs"] < 1):
            raise ConfigError(f"{where}.max_pairs: {v['max_pairs']!r} must be a whole number >= 1 or null")
    pairs = options.get("pairs")
    if pairs is not None and not isinstance(pairs, (str, dict)):
        raise ConfigError(f"study.analysis_options.pairs: {pairs!r} must be a JSONL path (builtin:<file> or a local "
                          "file) or an audit.data mapping (hf_dataset, split, mapping; see conf/audit.yaml)")
    for key in ("limit_per_criterion", "few_shot_examples", "invariance_pairs"):
        val = options.get(key)
        if val is not None and (not isinstance(val, int) or val < 0):
            raise ConfigError(f"study.analysis_options.{key}: {val!r} must be a whole number >= 0 (or null)")


def select_pairs(rows: list[dict], criteria: list[str] | None, limit: int | None, shots: int
                 ) -> tuple[list[dict], dict[str, list[dict]]]:
    """(pairs to score, few-shot examples per criterion): the first ``shots`` pairs of each
    criterion become its examples and are not scored; at most ``limit`` pairs per criterion follow."""
    by_crit: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if criteria is None or r.get("criterion") in criteria:
            by_crit[r.get("criterion") or ""].append(r)
    if criteria:
        absent = [c for c in criteria if c not in by_crit]
        if absent:
            raise ConfigError(f"study.analysis_options.criteria: no labelled pairs for {absent}; the file has "
                              f"{sorted({r.get('criterion') for r in rows})}")
    scored, examples = [], {}
    for crit, rs in by_crit.items():
        examples[crit] = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rs[:shots]]
        rest = rs[shots:]
        scored += rest[:limit] if limit else rest
    return scored, examples


def counts(orders: list[tuple[float | None, float | None]] | None, prefs: list[float | None], gold: list[float]
           ) -> dict[str, Any]:
    """The counts the check needs from one variant's verdicts (see the module docstring)."""
    out: dict[str, Any] = {"n": len(gold), "invalid": sum(p is None for p in prefs)}
    aligned = ties = 0
    table = {"lf_gf": 0, "lf_gs": 0, "ls_gf": 0, "ls_gs": 0}
    for p, g in zip(prefs, gold, strict=True):
        if p is None:
            continue
        if abs(p - 0.5) <= TIE_TOL:
            ties += 1
            continue
        lab, gf = p > 0.5, g > 0.5
        aligned += lab == gf
        table[("lf" if lab else "ls") + ("_gf" if gf else "_gs")] += 1
    out.update(aligned=aligned, ties=ties, averaged=table)
    if orders:
        single = {"lf_gf": 0, "lf_gs": 0, "ls_gf": 0, "ls_gs": 0}
        first = total = single_aligned = 0
        for (f, s), g in zip(orders, gold, strict=True):
            gf = g > 0.5
            if f is not None and abs(f - 0.5) > TIE_TOL:  # ordering 1: a in slot 1
                single[("lf" if f > 0.5 else "ls") + ("_gf" if gf else "_gs")] += 1
                first += f > 0.5
                total += 1
                single_aligned += (f > 0.5) == gf
            if s is not None and abs(s - 0.5) > TIE_TOL:  # ordering 2: a in slot 2; s = P(a better)
                first += s < 0.5
                total += 1
        out.update(single_order=single, single_order_first=first, single_order_total=total,
                   single_order_aligned=single_aligned)
        pos = position_bias([(f, s) for f, s in orders])
        out.update({k: pos[k] for k in ("position_consistency", "same_slot_rate", "first_slot_share", "tie_rate")
                    if k in pos})
    return out


def _prompts(rows: list[dict]):
    from rlaif.types import Prompt

    return [Prompt(r["id"], r["prompt"], [{"role": "user", "content": r["prompt"]}], "audit") for r in rows]


def invariance(judge, rows: list[dict], raw: dict, k: int) -> dict[str, Any]:
    """The first ``k`` pairs judged again with the two responses' presentation swapped."""
    if judge.pointwise or k <= 0 or not rows:
        return {}
    k = min(k, len(rows))
    flips = [g < 0.5 for g in raw["gold"][:k]]  # gold 0: the better response was shown as b
    a = [r["rejected"] if f else r["chosen"] for r, f in zip(rows[:k], flips, strict=True)]
    b = [r["chosen"] if f else r["rejected"] for r, f in zip(rows[:k], flips, strict=True)]
    again = judge.prefer(_prompts(rows[:k]), b, a)  # P(b better) with b shown first
    agree, worst, valid = 0, 0.0, 0
    for p, q in zip(raw["prefs"][:k], again, strict=True):
        if p is None or q is None:
            continue
        valid += 1
        worst = max(worst, abs(p - (1.0 - q)))
        agree += (p > 0.5) == (q < 0.5) or (abs(p - 0.5) <= TIE_TOL and abs(q - 0.5) <= TIE_TOL)
    return {"n": valid, "agree": agree, "max_mismatch": worst}


def labeler_audit(cfg: DictConfig, data: StudyData, out: Path, options: dict) -> dict[str, Any]:
    """``study.analysis`` of experiment=paper/rlaif_labeler: every variant on the labelled pairs."""
    from rlaif.audit import _criterion, _judge_config, judge_rows, load_labelled_pairs
    from rlaif.models import ModelPool

    check_options(options)
    pairs = options.get("pairs") or "builtin:audit/pairs.jsonl"
    rows = load_labelled_pairs(pairs if isinstance(pairs, dict) else {"path": pairs})
    scored, examples = select_pairs(rows, options.get("criteria"), options.get("limit_per_criterion"),
                                    int(options.get("few_shot_examples") or 0))
    if not scored:
        raise ConfigError("study.analysis_options: no labelled pairs left to score (criteria, limit_per_criterion, "
                          "few_shot_examples)")
    seed = int(options.get("seed", cfg.seed))
    pool = ModelPool(cfg.cache.dir, cfg.policy.prefer_hub, cfg.policy.trust_remote_code)
    by_crit: dict[str, list[dict]] = defaultdict(list)
    for r in scored:
        by_crit[r.get("criterion") or cfg.criteria.name].append(r)
    result: dict[str, Any] = {"pairs": options.get("pairs"), "n_pairs": len(scored),
                              "criteria": sorted(by_crit), "variants": {}}
    for name, v in options["variants"].items():
        t = time.perf_counter()
        jcfg = OmegaConf.merge(_judge_config(cfg, v["judge"]), v.get("options") or {})
        jcfg = OmegaConf.create(OmegaConf.to_container(jcfg, resolve=True))
        parts: dict[str, list] = defaultdict(list)
        inv: dict[str, Any] | None = None
        for crit_name, crit_rows in by_crit.items():
            crit = _criterion(crit_name)
            if v.get("few_shot"):
                crit = dataclasses.replace(crit, wording={**crit.wording, "few_shot": examples.get(crit_name, [])})
            judge = instantiate(jcfg, _partial_=True)(criterion=crit, pool=pool)
            use = crit_rows[: v["max_pairs"]] if v.get("max_pairs") else crit_rows
            raw = judge_rows(judge, use, seed)
            for key in ("prefs", "orders", "gold"):
                parts[key] += raw[key]
            if inv is None:  # invariance on the first criterion's pairs
                inv = invariance(judge, use, raw, int(options.get("invariance_pairs") or 0))
        res = counts(parts["orders"] or None, parts["prefs"], parts["gold"])
        res.update(kind=v["judge"], options=v.get("options") or {}, few_shot=bool(v.get("few_shot")),
                   invariance=inv, time_s=round(time.perf_counter() - t, 1))
        result["variants"][name] = res
        result[f"{name}/alignment"] = res["aligned"] / res["n"] if res["n"] else None
        if "same_slot_rate" in res:
            result[f"{name}/same_slot_rate"] = res["same_slot_rate"]
        log.info("labeler audit %s: alignment %s over %d pairs (%.0f s)", name, result[f"{name}/alignment"],
                 res["n"], res["time_s"])
        print(f"rlaif: labeler audit {name}: aligned {res['aligned']}/{res['n']}, same-slot "
              f"{res.get('same_slot_rate', 'n/a')}, {res['time_s']} s", flush=True)
    return result
