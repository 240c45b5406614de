"""Per-iteration measurements of a self-rewarding run (Yuan et al. 2024, arXiv:2401.10020), the
study analysis of ``experiment=paper/self_rewarding_cpu``.

The run (``optimizer=self_rewarding optimizer.keep_rounds=true``) keeps each round's policy beside
the trained one. For every iteration M0 (the initial policy), M1, ..., MR this measures

- against the initial policy on the run's held-out prompts: the run's frozen judge's win rate,
  the gold reward, the mean length and the KL, by ``rlaif.evaluation.evaluate`` on the run's own
  reference samples (the last round's figures are the run's evaluation, not recomputed);
- the self-judge's accuracy on labelled pairs (``rlaif/data/audit/pairs.jsonl``): the iteration's
  policy rating both responses of each pair with the prompt it trains on (the run's criterion,
  pointwise, on the optimizer's rating scale), scored as ``rlaif-audit`` scores a judge.

It loads and samples models but trains nothing, and reads the run only through its folder
(resolved_config.yaml, prompts.jsonl, eval_reference.jsonl, the ``policy`` link).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rlaif.reproductions.checks import StudyData

log = logging.getLogger(__name__)

DEFAULT_PAIRS = "builtin:audit/pairs.jsonl"


class AnalysisError(ValueError):
    """The study's runs do not hold what the per-round analysis needs; says which and how to fix it."""


def round_models(run: Path, rounds: int) -> dict[int, Path]:
    """Round r -> its policy folder, r = 1..rounds (the last is the run's trained policy)."""
    policy = (run / "policy").resolve()
    if not policy.is_dir():
        raise AnalysisError(f"{run}/policy: no trained policy (the run did not finish?)")
    out = {r: policy.parent / "rounds" / f"round_{r}" for r in range(1, rounds)}
    out[rounds] = policy
    gone = [str(p) for p in out.values() if not (p / "config.json").is_file()]
    if gone:
        raise AnalysisError(f"round policies missing: {', '.join(gone)}; the self_rewarding member needs "
                            "optimizer.keep_rounds=true (study.runs.<member>)")
    return out


def audit_rows(path: str, criterion: str, which: str) -> list[dict]:
    from rlaif.audit import load_labelled_pairs

    rows = load_labelled_pairs({"path": path})
    if which == "same":
        rows = [r for r in rows if r.get("criterion") == criterion]
    if not rows:
        raise AnalysisError(f"study.analysis_options.audit_path={path}: no labelled pairs with criterion "
                            f"{criterion!r} (set audit_criteria: all, or give pairs of that criterion)")
    return rows


def per_round(cfg, data: StudyData, out: Path, options: dict) -> dict[str, Any]:
    """The study analysis: ``study.analysis: rlaif.reproductions.self_rewarding:per_round``.

    Options: ``run`` (the self-rewarding member, default ``self_rewarding``), ``audit_path`` (labelled
    pairs, default the bundled file), ``audit_criteria`` (``same``: only pairs of the run's criterion,
    judged with the self-judge's wording; ``all``: every pair, still with that wording).
    """
    from hydra.utils import instantiate

    from rlaif.criteria import Criterion
    from rlaif.evaluation import KLModels, Scorers, evaluate
    from rlaif.generators import HFGenerator
    from rlaif.generators.hf import SampleTag
    from rlaif.io import read_records
    from rlaif.models import ModelPool
    from rlaif.types import Candidate, Prompt

    member = str(options.get("run", "self_rewarding"))
    which = str(options.get("audit_criteria", "same"))
    if which not in ("same", "all"):
        raise AnalysisError(f"study.analysis_options.audit_criteria={which!r}: use same or all")
    rec = data.runs.get(member)
    if rec is None or not rec.complete:
        raise AnalysisError(f"study.analysis_options.run={member!r}: no finished member of that name "
                            f"(members: {', '.join(data.runs) or 'none'})")
    run = Path(rec.path)
    mcfg = OmegaConf.load(run / "resolved_config.yaml")
    if mcfg.optimizer.get("name") != "self_rewarding":
        raise AnalysisError(f"study.runs.{member}: optimizer is {mcfg.optimizer.get('name')!r}, not self_rewarding")
    rounds = int(mcfg.optimizer.rounds)
    models = round_models(run, rounds)
    rows = audit_rows(str(options.get("audit_path") or DEFAULT_PAIRS), str(mcfg.criteria.name), which)

    pool = ModelPool(mcfg.cache.dir, bool(mcfg.policy.prefer_hub), bool(mcfg.policy.trust_remote_code))
    base = str(mcfg.policy.model)
    names = {0: base}
    for r, path in models.items():
        names[r] = f"self-rewarding-M{r}"
        pool.add(names[r], str(path), f"self-rewarding-round-{r}:{path}")
    criterion = Criterion.from_config(mcfg.criteria)
    ev = mcfg.evaluation
    prompts = [p for p in read_records(run / "prompts.jsonl", Prompt) if p.split == "eval"]
    reference = read_records(run / "eval_reference.jsonl", Candidate)
    judge = instantiate(mcfg.judge, _partial_=True)(criterion=criterion, pool=pool)
    gold = instantiate(mcfg.data.gold) if mcfg.data.get("gold") else None
    summary = rec.summary

    win, gold_r, length, kl = [0.5], [summary.get("eval/gold_reward_reference")], \
        [summary.get("eval/length_reference")], [0.0]
    for r in range(1, rounds + 1):
        if r == rounds:  # the run's own evaluation of its trained policy
            m = summary
        else:
            gen = HFGenerator(model=names[r], temperature=ev.temperature, top_p=ev.top_p,
                              max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, dtype=ev.dtype)
            pol = gen.sample_model(pool, names[r], prompts, int(ev.samples_per_prompt), int(mcfg.seed) + 1,
                                   SampleTag(pool.resolve(names[r]).identity, "policy", f"analysis: M{r} evaluate"))
            _, m = evaluate(prompts, pol, reference, Scorers(judge, gold),
                            KLModels(pool.model(names[r], ev.kl_dtype), pool.model(base, ev.kl_dtype),
                                     pool.tokenizer(base), int(ev.kl_batch_size)))
        win.append(m.get("eval/win_rate"))
        gold_r.append(m.get("eval/gold_reward_policy"))
        length.append(m.get("eval/length_policy"))
        kl.append(m.get("eval/kl"))

    accuracy, longer, invalid = audit_accuracy(pool, names, criterion, rows, mcfg)
    history = _round_history(run)
    values: dict[str, Any] = {
        "rounds": rounds, "iterations": [f"M{r}" for r in range(rounds + 1)],
        "win_rate": _r(win), "gold": _r(gold_r), "length": _r(length), "kl": _r(kl),
        "audit_accuracy": _r(accuracy), "audit_p_prefer_longer": _r(longer), "audit_invalid": invalid,
        "audit_pairs": len(rows), "audit_criteria": which,
        "length_drift": _r([x / length[0] if _ok(x) and _ok(length[0]) and length[0] else None for x in length]),
        "self_judge_gold_agreement": _r([history.get(r, {}).get("train/self_judge_gold_agreement")
                                         for r in range(1, rounds + 1)]),
        "train_pairs": [history.get(r, {}).get("train/pairs") for r in range(1, rounds + 1)],
    }
    _plot(values, out / "self_rewarding_rounds.png")
    return values


def audit_accuracy(pool, names: dict[int, str], criterion, rows: list[dict], mcfg) -> tuple[list, list, list]:
    """Per iteration: the self-judge's accuracy on ``rows`` (ties and invalid ratings excluded), its
    P(prefer the longer response), and its invalid ratings."""
    from rlaif.audit import judge_rows, raw_metrics
    from rlaif.judges import PointwiseJudge

    o = mcfg.optimizer
    acc, longer, invalid = [], [], []
    for r in sorted(names):
        judge = PointwiseJudge(criterion, pool=pool, model=names[r], dtype=str(o.judge_dtype),
                               batch_size=int(o.judge_batch_size), seed=int(mcfg.seed),
                               min_rating=int(o.get("min_rating", 1)), max_rating=int(o.get("max_rating", 9)))
        m = raw_metrics(judge_rows(judge, rows, int(mcfg.seed)))
        acc.append(m.get("accuracy_averaged"))
        longer.append(m.get("p_prefer_longer"))
        invalid.append(m.get("invalid"))
        log.info("self-rewarding analysis: M%d self-judge accuracy %s on %d pairs", r, acc[-1], len(rows))
    return acc, longer, invalid


def _round_history(run: Path) -> dict[int, dict]:
    """train/round rows of the run's training history (what the optimizer logged at each round's start)."""
    from rlaif.io import read_jsonl

    path = run / "train_history.jsonl"
    if not path.is_file():
        return {}
    return {int(row["train/round"]): row for row in read_jsonl(path) if "train/round" in row}


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _r(xs: list) -> list:
    return [round(float(x), 4) if _ok(x) else None for x in xs]


def _plot(values: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional
        return
    it = list(range(len(values["iterations"])))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, key, title in zip(axes, ("win_rate", "audit_accuracy", "length"),
                              ("win rate vs M0 (run's judge)", "self-judge accuracy (audit pairs)", "mean length (tokens)"),
                              strict=True):
        ys = [y if y is not None else float("nan") for y in values[key]]
        ax.plot(it, ys, marker="o")
        ax.set_xticks(it, values["iterations"])
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
