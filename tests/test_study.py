"""The study runner (rlaif/reproductions/study.py) on the tiny model: members composed from one
command, run into one folder, reused on rerun; a bad member fails before anything loads; a failed
member is reported and the command exits non-zero; the study's W&B run holds the check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlaif.config import ConfigError
from rlaif.reproductions.study import member_configs, run_study

REPO = Path(__file__).resolve().parents[1]


def tiny_study(tiny_model, tmp_path, members: str) -> list[str]:
    return [
        # the contrastive judge: VADER, the config's judge, scores the tiny model's random text 0 (no pairs)
        "experiment=paper/dpo_sentiment_cpu", "judge=contrastive", f"policy.model={tiny_model}",
        f"cache.dir={tmp_path / 'cache'}",
        "data.num_train=6", "data.num_eval=3", "generator.num_candidates=3", "generator.max_new_tokens=8",
        "generator.dtype=float32", "judge.dtype=float32", "evaluation.dtype=float32",
        "evaluation.samples_per_prompt=2", "preferences.min_margin=0.0", "~study.runs", f"+study.runs={members}",
    ]


DPO3 = ("{dpo_a:['optimizer.beta=0.05','optimizer.mixed_precision=no','optimizer.learning_rate=1e-3'],"
        "dpo_b:['optimizer.beta=0.5','optimizer.mixed_precision=no','optimizer.learning_rate=1e-3'],"
        "ppo_a:['optimizer=ppo','optimizer.total_episodes=8','optimizer.rollout_batch_size=4',"
        "'optimizer.mixed_precision=no']}")


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline",
           "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)}
    return subprocess.run([sys.executable, "-m", "rlaif", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def study(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    out = tmp / "out"
    proc = _cli(tiny_study(tiny_model, tmp, DPO3) + [f"hydra.run.dir={out}"], tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, out, proc


def test_members_run_into_one_folder_with_their_overrides(study):
    _, out, _ = study
    names = sorted(p.name for p in (out / "runs").iterdir())
    assert names == ["dpo_a", "dpo_b", "ppo_a"]
    for name, opt, beta in [("dpo_a", "dpo", 0.05), ("dpo_b", "dpo", 0.5), ("ppo_a", "ppo", None)]:
        folder = out / "runs" / name
        resolved = (folder / "resolved_config.yaml").read_text()
        assert f"name: {opt}\n" in resolved
        if beta is not None:
            assert f"beta: {beta}" in resolved
        assert json.loads((folder / "summary.json").read_text())["eval/samples_per_policy"] == 6
    # the DPO members shared their samples and judgments: the second reused the first's stages
    assert json.loads((out / "runs" / "dpo_b" / "summary.json").read_text())["cache/hits"] >= 2


def test_study_summary_reports_the_check_beside_the_thresholds(study):
    _, out, proc = study
    s = json.loads((out / "summary.json").read_text())
    assert s["reproduction/name"] == "dpo_sentiment" and s["reproduction/check"].startswith("DPO's reward-KL")
    assert isinstance(s["reproduction/passed"], bool)
    assert s["reproduction/passed"] == all(s[f"reproduction/{c}/passed"] for c in
                                           ("dpo_on_or_above_ppo", "matched_kl_points", "beta_kl_spearman"))
    # two DPO runs: the beta-KL criterion needs three, so it fails saying why instead of guessing
    assert s["reproduction/beta_kl_spearman/passed"] is False
    assert "needs >= 3 dpo runs" in s["reproduction/beta_kl_spearman/why"]
    assert s["reproduction/threshold/min_share_on_or_above"] == 1.0
    for name in ("dpo_a", "dpo_b", "ppo_a"):
        member = json.loads((out / "runs" / name / "summary.json").read_text())
        assert s[f"runs/{name}/eval/kl"] == member["eval/kl"]
    md = (out / "reproduction.md").read_text()
    assert "FAILED" in md and "smaller beta gives larger KL" in md and "| dpo_a" in md.replace("dpo_a |", "| dpo_a")
    assert (out / "comparison" / "comparison.csv").is_file()
    assert "FAIL: DPO's reward-KL frontier" in proc.stdout


def test_study_wandb_run_holds_the_check(study):
    _, out, _ = study
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    got = subprocess.run(["wandb", "leet", "inspect", "--summary", "--json", str(runs[0])], capture_output=True,
                         text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    summary = json.loads(got.stdout)["summary"]
    on_disk = json.loads((out / "summary.json").read_text())
    for key in ("reproduction/passed", "reproduction/matched_kl_points/measured", "reproduction/check"):
        assert summary[key] == on_disk[key]


def test_rerun_reuses_finished_members(study, tiny_model):
    tmp, out, _ = study
    before = {p.name: (p / "summary.json").stat().st_mtime_ns for p in (out / "runs").iterdir()}
    proc = _cli(tiny_study(tiny_model, tmp, DPO3) + [f"hydra.run.dir={out}"], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("finished earlier, reused") == 3
    after = {p.name: (p / "summary.json").stat().st_mtime_ns for p in (out / "runs").iterdir()}
    assert after == before


def test_bad_member_fails_before_any_model_loads(tiny_model, tmp_path):
    members = "{dpo_a:['optimizer.beta=0.1'],bad:['optimizer=ppo','optimizer.target_kll=3']}"
    out = tmp_path / "out"
    proc = _cli(tiny_study(tiny_model, tmp_path, members) + [f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 2
    assert "study.runs.bad" in proc.stderr and "target_kll" in proc.stderr
    assert not (out / "runs").exists()  # nothing ran, not even the good member
    assert not (tmp_path / "cache" / "stages").exists()


def test_member_configs_name_the_member_and_its_error(tiny_model, tmp_path):
    from tests.conftest import compose_config

    cfg = compose_config(tiny_study(tiny_model, tmp_path, "{x:['optimizer.beta=-1']}"))
    with pytest.raises(ConfigError, match=r"study.runs.x .*optimizer.beta"):
        member_configs(cfg, tiny_study(tiny_model, tmp_path, "{x:['optimizer.beta=-1']}"))


def test_failed_member_is_reported_and_others_still_run(tiny_model, tmp_path):
    from tests.conftest import compose_config

    # a prompt file that exists at composition but is gone when the second member loads its data
    members = "{dpo_a:['optimizer.beta=0.1','optimizer.mixed_precision=no'],gone:['data.path=" + str(
        tmp_path / "missing.jsonl") + "']}"
    overrides = tiny_study(tiny_model, tmp_path, members) + ["tracker=none"]
    cfg = compose_config(overrides)
    from rlaif.reproductions.study import StudyFailed

    with pytest.raises(StudyFailed, match="gone"):
        run_study(cfg, tmp_path / "out", overrides)
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["study/failed"] == ["gone"] and s["runs/dpo_a/complete"] is True and s["runs/gone/complete"] is False
    assert s["reproduction/passed"] is False
    assert (tmp_path / "out" / "runs" / "gone" / "study_error.txt").is_file()


def test_reproductions_table_reads_the_study_folder(study, capsys):
    from rlaif.reproductions import results

    tmp, out, _ = study
    found = results.find_studies([tmp])  # found from a folder above the study; member runs are not studies
    assert [s.path for s in found] == [out]
    crit = {c["name"]: c for c in found[0].criteria()}
    assert set(crit) == {"dpo_on_or_above_ppo", "matched_kl_points", "beta_kl_spearman"}
    assert crit["beta_kl_spearman"]["passed"] is False
    assert results.main([str(tmp), "--out", str(tmp / "table.md")]) == 0
    md = (tmp / "table.md").read_text()
    assert "| dpo_sentiment (2305.18290) | cpu | **fail** |" in md and "experiment=paper/dpo_sentiment_cpu" in md
    assert (tmp / "table.csv").read_text().count("\n") == 4  # header + three criteria
    (tmp / "empty").mkdir()
    assert results.main([str(tmp / "empty")]) == 2


def test_reproductions_notebook_renders_the_table_and_plots(study, monkeypatch):
    import nbclient
    import nbformat

    tmp, out, _ = study
    path = REPO / "notebooks" / "reproductions.ipynb"
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit the notebook with outputs cleared"
    monkeypatch.setenv("RLAIF_STUDIES", str(tmp))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p))
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    markdown = [o["data"]["text/markdown"] for c in code for o in c.outputs if "text/markdown" in o.get("data", {})]
    assert any("| dpo_sentiment (2305.18290) | cpu | **fail** |" in m for m in markdown)
    assert any("smaller beta gives larger KL" in m for m in markdown)  # the study's reproduction.md
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == len(list((out / "comparison").glob("*.png"))) >= 1
