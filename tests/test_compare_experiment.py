"""``rlaif -m experiment=compare optimizer=dpo,online_dpo`` on the tiny model, as the experiment's
own header runs it: an online method gets exactly the judge calls DPO's labelling spent, a held-out
judge that never trained anything scores both policies' samples, and the sweep's comparison table
holds both runs' numbers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rlaif import compare
from rlaif.criteria import Criterion
from rlaif.io import read_jsonl
from rlaif.models import ModelPool
from rlaif.types import Prompt

REPO = Path(compare.__file__).resolve().parents[1]
NUM_TRAIN, CANDIDATES = 6, 3
HELDOUT = ["eval/heldout_win_rate", "eval/heldout_preference", "eval/heldout_invalid"]


@pytest.fixture(scope="module")
def sweep(tiny_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("compare-experiment")
    root = base / "multirun"
    # batch_size 3: online DPO judges 2 x 3 responses per step, which divides DPO's 6 x 3 labelling calls
    tiny = [f"policy.model={tiny_model}", f"cache.dir={base / 'cache'}", f"data.num_train={NUM_TRAIN}",
            "data.num_eval=3", f"generator.num_candidates={CANDIDATES}", "generator.max_new_tokens=8",
            "generator.dtype=float32", "judge.dtype=float32", "evaluation.heldout_judge.dtype=float32",
            "evaluation.dtype=float32", "evaluation.samples_per_prompt=2", "optimizer.epochs=1",
            "optimizer.batch_size=3", "optimizer.learning_rate=1e-3", "optimizer.mixed_precision=no",
            "tracker=none", "diagnostics=none"]
    cmd = [sys.executable, "-m", "rlaif", "-m", "experiment=compare", "optimizer=dpo,online_dpo",
           f"hydra.sweep.dir={root}", *tiny]
    env = {**os.environ, "WANDB_MODE": "offline",
           "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)}
    proc = subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = {OmegaConf.load(j / "resolved_config.yaml").optimizer.name: j for j in sorted(root.iterdir())
            if j.name.isdigit()}
    assert sorted(jobs) == ["dpo", "online_dpo"], sorted(root.iterdir())
    return SimpleNamespace(root=root, jobs=jobs, tiny_model=tiny_model,
                           summaries={k: json.loads((j / "summary.json").read_text()) for k, j in jobs.items()})


def test_both_runs_are_the_matched_setup(sweep):
    for job in sweep.jobs.values():
        cfg = OmegaConf.load(job / "resolved_config.yaml")
        assert (cfg.judge.kind, cfg.criteria.name, cfg.budget.judge_calls) == ("contrastive", "positive_sentiment",
                                                                               "offline")
        assert cfg.evaluation.heldout_judge.kind == "pointwise"
    prompts = {k: (j / "prompts.jsonl").read_bytes() for k, j in sweep.jobs.items()}
    assert prompts["dpo"] == prompts["online_dpo"]  # the same prompts, split and seed


def test_online_method_gets_the_judge_calls_dpo_labelling_spent(sweep):
    dpo, online = sweep.summaries["dpo"], sweep.summaries["online_dpo"]
    labelled = len(read_jsonl(sweep.jobs["dpo"] / "candidates.jsonl"))
    assert labelled == NUM_TRAIN * CANDIDATES  # the contrastive judge scores each candidate once
    assert dpo["train/judge_calls"] == labelled
    assert online["train/judge_calls"] == labelled  # spent while training, stopped by the budget
    history = read_jsonl(sweep.jobs["online_dpo"] / "train_history.jsonl")
    steps = [row["train/step"] for row in history if "train/step" in row]
    assert max(steps) == labelled // (2 * 3)  # optimizer steps: 2 responses judged per prompt, 3 prompts a step


def test_heldout_judge_scores_both_policies_samples(sweep):
    for summary in sweep.summaries.values():
        assert all(k in summary for k in HELDOUT), sorted(summary)
        assert summary["eval/heldout_invalid"] == 0
    # Score the DPO run's paired eval samples with the held-out judge as configured: the same numbers.
    job = sweep.jobs["dpo"]
    cfg = OmegaConf.load(job / "resolved_config.yaml")
    prompts = {p["id"]: Prompt.from_dict(p) for p in read_jsonl(job / "prompts.jsonl")}
    samples = read_jsonl(job / "eval_samples.jsonl")
    ref = {(s["prompt_id"], s["index"]): s for s in samples if s["source"] == "reference"}
    pairs = [(s, ref[(s["prompt_id"], s["index"])]) for s in samples if s["source"] == "policy"]
    assert len(pairs) == 3 * 2
    judge = instantiate(cfg.evaluation.heldout_judge, _partial_=True)(criterion=Criterion.from_config(cfg.criteria),
                                                                       pool=ModelPool(cfg.cache.dir))
    prefs = judge.prefer([prompts[a["prompt_id"]] for a, _ in pairs], [a["text"] for a, _ in pairs],
                         [b["text"] for _, b in pairs])
    wins = [1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5 for p in prefs]
    assert sweep.summaries["dpo"]["eval/heldout_win_rate"] == pytest.approx(sum(wins) / len(wins), abs=1e-9)
    assert sweep.summaries["dpo"]["eval/heldout_preference"] == pytest.approx(sum(prefs) / len(prefs), abs=1e-6)


def test_sweep_comparison_holds_both_runs(sweep):
    out = sweep.root / "comparison"  # written by the sweep's callback when the multirun ended
    with open(out / "comparison.csv", newline="") as f:
        rows = {row["optimizer"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == ["dpo", "online_dpo"]
    for name, row in rows.items():
        s = sweep.summaries[name]
        assert row["status"] == "ok"
        for key in ["eval/heldout_win_rate", "eval/win_rate", "eval/kl", "train/judge_calls"]:
            assert float(row[key]) == pytest.approx(s[key], abs=1e-12), (name, key)
    assert rows["dpo"]["label"] == "dpo" and rows["online_dpo"]["label"] == "online_dpo"
    result = json.loads((out / "comparison.json").read_text())
    assert result["complete"] == 2 and "train_vs_heldout" in result["plots"]
    fig, ykey = compare.plot_train_vs_heldout(compare.load_runs(sweep.root))
    assert ykey == "eval/heldout_win_rate"  # the held-out judge, not the gold-reward fallback
    points = sorted((x, y) for line in fig.axes[0].lines if line.get_label() in sweep.summaries
                    for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True))
    want = sorted((s["eval/win_rate"], s["eval/heldout_win_rate"]) for s in sweep.summaries.values())
    assert len(points) == len(want)
    for got, exp in zip(points, want, strict=True):  # element-wise: pytest 9.2's approx refuses nested tuples
        assert got == pytest.approx(exp)
