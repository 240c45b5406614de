"""The whole pipeline on the tiny model: records in the run folder, W&B offline files, summary,
a frozen judge, and a warm cache that skips every finished stage."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import compose_config
from safetensors.torch import load_file

import rlaif
from rlaif.manifest import git_state
from rlaif.pipeline import run

SUMMARY_KEYS = ["eval/gold_reward_reference", "eval/gold_reward_policy", "eval/win_rate", "eval/kl",
                "eval/length_policy", "eval/length_reference", "time/total_s", "time/generate_s", "time/judge_s",
                "time/preferences_s", "time/train_s", "time/evaluate_s"]


def wandb_inspect(run_dir: Path, summary_only: bool = True) -> dict:
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline W&B run in {run_dir}, found {runs}"
    cmd = ["wandb", "leet", "inspect", "--json"] + (["--summary"] if summary_only else []) + [str(runs[0])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out) if summary_only else [json.loads(line) for line in out.splitlines() if line.strip()]


def _checkout_state(source: Path) -> dict:
    """What git itself says about the checkout holding ``source`` (None, None outside one)."""
    head = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    status = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, check=True).stdout
    return {"commit": head.stdout.strip(), "dirty": status != ""}


SOURCE = Path(rlaif.__file__).resolve().parent


@pytest.fixture
def git_before() -> dict:
    return _checkout_state(SOURCE)


@pytest.fixture
def first_run(tiny_overrides, tmp_path):
    cfg = compose_config(tiny_overrides)
    out = tmp_path / "run1"
    summary = run(cfg, output_dir=out)
    return cfg, out, summary


def test_run_writes_every_stage_and_summary(first_run, tiny_model):
    from datasets import load_dataset

    _, out, summary = first_run
    for name in ["prompts", "candidates", "judgments", "preferences", "eval_samples"]:
        assert (out / f"{name}.jsonl").stat().st_size > 0, name
    on_disk = json.loads((out / "summary.json").read_text())
    for key in SUMMARY_KEYS:
        assert key in on_disk, key
    assert on_disk["eval/gold_reward_policy"] == pytest.approx(summary["eval/gold_reward_policy"])
    candidates = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines()]
    assert len(candidates) == 6 * 3  # num_train x num_candidates
    samples = [json.loads(x) for x in (out / "eval_samples.jsonl").read_text().splitlines()]
    assert sum(s["source"] == "policy" for s in samples) == 3 * 2 == on_disk["eval/samples_per_policy"]

    prefs = load_dataset("json", data_files=str(out / "preferences.jsonl"), split="train")
    assert {"prompt", "chosen", "rejected", "judge", "chosen_score", "rejected_score", "margin"} <= set(prefs.column_names)
    row = prefs[0]
    assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert row["chosen_score"] > row["rejected_score"]
    assert row["judge"].startswith("contrastive:")

    # The trained policy changed; the model the judge loaded (the original folder) did not.
    original = load_file(str(Path(tiny_model) / "model.safetensors"))
    trained = load_file(str(out / "policy" / "model.safetensors"))
    assert any(not original[k].equal(trained[k]) for k in original if k in trained)


def test_wandb_offline_run_holds_config_metrics_and_tables(git_before, first_run, tiny_model):
    _, out, summary = first_run
    info = wandb_inspect(out)
    s = info["summary"]
    for key in ["eval/gold_reward_policy", "eval/win_rate", "eval/kl", "preferences/pairs", "train/loss"]:
        assert key in s, key
    assert s["eval/kl"] == pytest.approx(summary["eval/kl"])
    assert s["eval/samples"]["_type"] == "table-file" and s["generate/samples"]["nrows"] > 0
    assert info["config"]["policy"]["model"] == tiny_model
    manifest = json.loads((out / "manifest.json").read_text())
    import torch
    import transformers
    import trl

    assert (manifest["packages"]["torch"], manifest["packages"]["trl"], manifest["packages"]["transformers"]) == \
        (torch.__version__, trl.__version__, transformers.__version__)
    identity = manifest["models"]["policy"]
    assert identity.startswith(f"local:{Path(tiny_model).resolve()}:") and len(identity.rsplit(":", 1)[1]) == 16
    assert manifest["models"]["judge"] == identity  # the same folder
    assert manifest["criterion"]["contrastive"]["positive"]  # the judge's prompts
    assert manifest["hardware"]["cpu_count"] == os.cpu_count()
    # what git says just before or just after the run (the checkout may change meanwhile)
    assert manifest["git"] in (git_before, _checkout_state(SOURCE))
    assert info["config"]["manifest"]["packages"]["transformers"] == manifest["packages"]["transformers"]


def test_manifest_git_state_follows_the_checkout(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no checkout above tmp_path counts
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "a.py").write_text("x = 1\n")

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    assert git_state(repo / "pkg") == {"commit": None, "dirty": None}
    git("init", "-q")
    git("add", "pkg/a.py")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    assert git_state(repo / "pkg") == {"commit": head, "dirty": False}
    (repo / "pkg" / "new.py").write_text("y = 2\n")  # untracked files leave the checkout clean
    assert git_state(repo / "pkg") == {"commit": head, "dirty": False}
    (repo / "pkg" / "a.py").write_text("x = 2\n")
    assert git_state(repo / "pkg") == {"commit": head, "dirty": True}


def test_second_run_reuses_every_stage(first_run, tmp_path):
    cfg, _, summary = first_run
    again = run(cfg, output_dir=tmp_path / "run2")
    assert again["cache/hits"] == 6  # generate, judge, diagnostics, train, evaluate_reference, evaluate
    for key in ["eval/gold_reward_policy", "eval/gold_reward_reference", "eval/win_rate", "eval/kl"]:
        assert again[key] == summary[key], key
    a = (tmp_path / "run1" / "preferences.jsonl").read_bytes()
    assert a == (tmp_path / "run2" / "preferences.jsonl").read_bytes()


def test_tracker_none_and_cache_disabled(tiny_overrides, tmp_path):
    cfg = compose_config(tiny_overrides + ["tracker=none", "cache.enabled=false", "data.num_train=4"])
    summary = run(cfg, output_dir=tmp_path / "plain")
    assert summary["cache/hits"] == 0
    assert not (tmp_path / "plain" / "wandb").exists()
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["preferences/pairs"] > 0


def test_pairwise_judge_pipeline_keeps_both_order_probabilities(tiny_overrides, tmp_path):
    cfg = compose_config(tiny_overrides + ["judge=pairwise", "tracker=none"])
    summary = run(cfg, output_dir=tmp_path / "pw")
    diag = json.loads((tmp_path / "pw" / "diagnostics.json").read_text())
    assert 0.0 <= diag["judge/position_consistency"] <= 1.0 and 0.0 <= diag["judge/same_slot_rate"] <= 1.0
    assert diag["judge/probe_swap_mismatch"] < 1e-6  # the swapped order really shows the texts swapped
    assert summary["judge/same_slot_rate"] == diag["judge/same_slot_rate"]
    prefs = [json.loads(x) for x in (tmp_path / "pw" / "preferences.jsonl").read_text().splitlines()]
    assert prefs, "pairwise judging produced no pairs"
    for p in prefs:
        assert 0.0 <= p["p_chosen_first"] <= 1.0 and 0.0 <= p["p_chosen_second"] <= 1.0
        assert p["judge"].startswith("pairwise:")


def test_diagnostics_written_and_logged(first_run):
    _, out, summary = first_run
    diag = json.loads((out / "diagnostics.json").read_text())
    # a pointwise judge with a gold labeller: gold agreement is computable, and length bias once the
    # candidates differ in length (the random tiny model rarely samples EOS within 8 tokens)
    lengths = {json.loads(x)["num_tokens"] for x in (out / "candidates.jsonl").read_text().splitlines()}
    keys = ["judge/accuracy_vs_gold"]
    keys += ["judge/p_prefer_longer", "judge/score_length_spearman"] if len(lengths) > 1 else []
    for key in keys:
        assert key in diag, key
        assert summary[key] == pytest.approx(diag[key])
    assert "judge/position_consistency" not in diag  # no pairwise verdicts, so not computed
    assert 0.0 <= diag["judge/probe_verbosity_padded_win_rate"] <= 1.0
    assert 0.0 <= diag["judge/probe_injection_this_flip_rate"] <= 1.0
    assert (out / "diagnostics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = wandb_inspect(out)["summary"]
    assert logged["judge/diagnostics"]["_type"] == "image-file"
    assert logged["judge/diagnostics_table"]["nrows"] == len(diag)


def test_sweep_runs_one_job_per_value(tiny_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = ["rlaif", "-m", "optimizer.beta=0.05,0.5", "diagnostics=none",
           f"hydra.sweep.dir={sweep / '2026-01-02' / '03-04-05'}", *tiny_overrides]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.glob("*/*/*/summary.json"))
    assert len(jobs) == 2, list(sweep.iterdir())
    betas = sorted(float((j / ".hydra" / "overrides.yaml").read_text().split("optimizer.beta=")[1].split()[0]) for j in jobs)
    assert betas == [0.05, 0.5]
    for job in jobs:  # one W&B group for the sweep, the optimizer as job type
        records = json.dumps(wandb_inspect(job, summary_only=False), separators=(",", ":"))
        assert '"run_group":"sweep-2026-01-02_03-04-05"' in records and '"job_type":"dpo"' in records


def test_gate_messages_name_metric_and_margin():
    from rlaif.diagnostics.gate import check_gate

    diag = {"judge/accuracy_vs_gold_with_ties": 0.55, "judge/gold_pairs_with_ties": 40,
            "judge/position_consistency": 0.9, "judge/same_slot_rate": 0.97}
    fails = check_gate({"min_agreement": 0.7, "min_position_consistency": 0.5, "max_same_slot_rate": 0.5}, diag)
    assert len(fails) == 2
    assert "judge/accuracy_vs_gold_with_ties = 0.550" in fails[0] and "short by 0.150" in fails[0]
    assert "judge/same_slot_rate = 0.970" in fails[1] and "over by 0.470" in fails[1]
    assert check_gate({"min_agreement": 0.5, "max_same_slot_rate": None}, diag) == []
    assert "could not be computed" in check_gate({"min_position_consistency": 0.5}, {})[0]


def test_gate_stops_run_before_training(tiny_overrides, tmp_path):
    from rlaif.diagnostics.gate import JudgeGateError

    # A pointwise judge has no position consistency: a gate on it cannot pass silently.
    cfg = compose_config(tiny_overrides + ["tracker=none", "diagnostics.gate.min_position_consistency=0.6"])
    with pytest.raises(JudgeGateError, match="judge/position_consistency"):
        run(cfg, output_dir=tmp_path / "gated")
    assert (tmp_path / "gated" / "gate_failed.json").exists()
    assert (tmp_path / "gated" / "judgments.jsonl").exists()
    assert not (tmp_path / "gated" / "policy").exists()  # never trained


def test_panel_run_reports_member_agreement(tiny_overrides, tmp_path):
    members = "[{_target_: rlaif.judges.VaderJudge}, {_target_: rlaif.judges.LengthJudge}]"
    cfg = compose_config(tiny_overrides + ["judge=panel", f"judge.members={members}", "tracker=none",
                                           "diagnostics.probe_items=0"])
    summary = run(cfg, output_dir=tmp_path / "panel")
    diag = json.loads((tmp_path / "panel" / "diagnostics.json").read_text())
    assert 0.0 <= diag["judge/panel_mean_agreement"] <= 1.0
    assert summary["judge/panel_mean_agreement"] == diag["judge/panel_mean_agreement"]
    verdicts = [json.loads(x) for x in (tmp_path / "panel" / "verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == 6 * 3  # every pair of 3 candidates for 6 prompts


def test_each_model_is_loaded_once_per_dtype(tiny_overrides, tmp_path):
    """Generator, judge and evaluation share one frozen instance of the policy model; the only other
    load of its folder is the copy DPO trains. The trained policy is loaded once per dtype it is used in."""
    from rlaif import models

    before = len(models.LOADS)
    run(compose_config([*tiny_overrides, "evaluation.dtype=float32", "evaluation.kl_dtype=float32", "tracker=none"]),
        output_dir=tmp_path / "run")
    loads = models.LOADS[before:]
    frozen_and_trained = [x for x in loads if x[0] == tiny_model_path(tiny_overrides)]
    assert frozen_and_trained == [(frozen_and_trained[0][0], "torch.float32")] * 2, loads
    others = [x for x in loads if x not in frozen_and_trained]
    assert others and len(others) == len(set(others)), loads  # the trained policy, once


def tiny_model_path(overrides: list[str]) -> str:
    return next(o.split("=", 1)[1] for o in overrides if o.startswith("policy.model="))
