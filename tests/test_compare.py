"""rlaif-compare on a real sweep: a Hydra multirun of the tiny pipeline (two DPO betas, with the
SweepSummary callback) plus a separately launched run beside it, compared by the CLI, the Python
API, the notebook and the callback."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from rlaif import compare
from rlaif.compare import RunRecord, SweepSummary, load_runs, main, make_labels

REPO = Path(compare.__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = ["gold_vs_kl", "winrate_vs_kl", "length_drift", "train_vs_heldout", "training_curves"]
PPO = ["optimizer=ppo", "optimizer.total_episodes=12", "optimizer.rollout_batch_size=4", "optimizer.ppo_epochs=1",
       "optimizer.num_minibatches=1", "optimizer.forward_batch_size=4", "optimizer.learning_rate=1e-3",
       "optimizer.mixed_precision=no", "optimizer.progress_bar=false"]


def _env() -> dict[str, str]:
    # The subprocesses import this checkout, installed or not.
    return {**os.environ, "WANDB_MODE": "offline",
            "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)}


@pytest.fixture(scope="module")
def sweep(tiny_model, tmp_path_factory):
    """<root>/multirun/{0,1}: `rlaif -m optimizer.beta=0.05,0.5` (real Hydra, the callback enabled);
    <root>/extra/beta2: a run started on its own (no .hydra/), as a user might add beside a sweep."""
    base = tmp_path_factory.mktemp("compare")
    root = base / "sweep"
    tiny = [  # as conftest's tiny_overrides (function-scoped there; this sweep is shared by the module)
        f"policy.model={tiny_model}", f"cache.dir={base / 'cache'}", "data.num_train=6", "data.num_eval=3",
        "generator.num_candidates=3", "generator.max_new_tokens=8", "generator.dtype=float32", "judge.dtype=float32",
        "optimizer.epochs=1", "optimizer.batch_size=4", "optimizer.learning_rate=1e-3",
        "optimizer.mixed_precision=no", "evaluation.samples_per_prompt=2", "tracker=none", "diagnostics=none"]
    cmd = [sys.executable, "-m", "rlaif", "-m", "optimizer.beta=0.05,0.5", f"hydra.sweep.dir={root / 'multirun'}",
           "++hydra.callbacks.sweep_summary._target_=rlaif.compare.SweepSummary", *tiny]
    proc = subprocess.run(cmd, cwd=base, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    from rlaif.pipeline import run

    run(compose_config([*tiny, "optimizer.beta=2.0"]), output_dir=root / "extra" / "beta2")  # reuses cached samples
    return SimpleNamespace(root=root, multirun=root / "multirun", output=proc.stdout + proc.stderr, tiny=tiny)


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _copy(sweep, dst: Path) -> Path:
    shutil.copytree(sweep.root, dst, symlinks=True, ignore=shutil.ignore_patterns("comparison"))
    return dst


def test_multirun_layout_is_what_compare_reads(sweep):
    jobs = sorted(p for p in sweep.multirun.iterdir() if p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    for job, beta in zip(jobs, ["0.05", "0.5"], strict=True):
        assert f"optimizer.beta={beta}" in OmegaConf.load(job / ".hydra" / "overrides.yaml")
        assert (job / "resolved_config.yaml").is_file() and "eval/kl" in _summary(job)
        assert OmegaConf.load(job / "resolved_config.yaml").optimizer.beta == float(beta)


def test_cli_writes_table_json_and_plots(sweep, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main([str(sweep.root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| run | optimizer |" in printed and str(out / "comparison.csv") in printed

    runs = {r.name: r for r in load_runs(sweep.root)}
    assert sorted(runs) == ["extra/beta2", "multirun/0", "multirun/1"]
    with open(out / "comparison.csv", newline="") as f:
        rows = {Path(row["run"]).relative_to(sweep.root).as_posix(): row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted(runs)
    for name, row in rows.items():
        s = _summary(sweep.root / name)
        assert float(row["eval/kl"]) == pytest.approx(s["eval/kl"], abs=1e-12)
        assert float(row["eval/gold_reward_policy"]) == pytest.approx(s["eval/gold_reward_policy"], abs=1e-12)
        assert float(row["eval/win_rate"]) == pytest.approx(s["eval/win_rate"], abs=1e-12)
        assert row["optimizer"] == "dpo" and row["status"] == "ok"
        assert row["eval/heldout_win_rate"] == "" and "eval/heldout_win_rate" not in s  # missing -> blank, not an error
    # labels: the varied override for the Hydra jobs, the folder for the run launched on its own
    assert rows["multirun/0"]["label"] == "beta=0.05" and rows["multirun/1"]["label"] == "beta=0.5"
    assert rows["extra/beta2"]["label"] == "extra/beta2" and float(rows["extra/beta2"]["optimizer.beta"]) == 2.0
    assert float(rows["multirun/1"]["optimizer.beta"]) == 0.5 and rows["multirun/1"]["seed"] == "0"

    md = (out / "comparison.md").read_text()
    assert sum(line.startswith("| ") for line in md.splitlines()) == 1 + 3 and "beta=0.05" in md and "KL" in md  # header + one row per run
    result = json.loads((out / "comparison.json").read_text())
    assert len(result["runs"]) == 3 and result["complete"] == 3
    assert all(r.history for r in runs.values())  # every run wrote train_history.jsonl
    assert sorted(result["plots"]) == sorted(PLOTS) and result["skipped_plots"] == {}
    for name in PLOTS:
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == PNG and len(data) > 5000, name


def test_plotted_points_are_the_summaries(sweep):
    runs = load_runs(sweep.root)
    fig = compare.plot_gold_vs_kl(runs)
    ax = fig.axes[0]
    assert ax.get_title() and ax.get_xlabel().startswith("KL") and "gold reward" in ax.get_ylabel()
    series = {c.get_label(): c.lines[0] for c in ax.containers}  # errorbar: (data line, caps, bars)
    # the reference's samples are one cached stage shared by every run: one reference point
    assert len({_summary(r.path)["eval/gold_reward_reference"] for r in runs}) == 1
    assert sorted(series) == ["dpo", "reference policy"]
    by_kl = sorted(runs, key=lambda r: _summary(r.path)["eval/kl"])
    assert list(series["dpo"].get_xdata()) == pytest.approx([_summary(r.path)["eval/kl"] for r in by_kl])  # KL order
    assert list(series["dpo"].get_ydata()) == pytest.approx([_summary(r.path)["eval/gold_reward_policy"] for r in by_kl])
    ref = next(line for label, line in series.items() if label.startswith("reference"))
    assert list(ref.get_xdata()) == [0.0]
    assert {t.get_text() for t in ax.texts} == {r.label for r in runs}
    fig, ykey = compare.plot_train_vs_heldout(runs)  # no held-out judge in these runs: the gold reward gain
    assert ykey == "eval/gold_reward_gain" and "eval/gold_reward_gain" in fig.axes[0].get_ylabel()


def test_training_curves_from_history(sweep, tmp_path):
    """DPO runs log a loss, PPO a reward: one panel each, every line the run's own train_history.jsonl."""
    from rlaif.pipeline import run

    root = _copy(sweep, tmp_path / "s")
    ppo = [o for o in sweep.tiny if not o.startswith("optimizer.")] + PPO  # DPO's settings are not PPO's keys
    run(compose_config(ppo), output_dir=root / "extra" / "ppo")  # a real run that logs train/reward
    runs = load_runs(root)
    fig = compare.plot_training_curves(runs)
    panels = {ax.get_ylabel(): ax for ax in fig.axes}
    assert sorted(panels) == ["train/loss", "train/reward"]
    plotted = {key: {ln.get_label(): ln for ln in ax.lines} for key, ax in panels.items()}
    assert sorted(plotted["train/reward"]) == ["extra/ppo (ppo)"]
    assert sorted(plotted["train/loss"]) == ["beta=0.05 (dpo)", "beta=0.5 (dpo)", "extra/beta2 (dpo)"]
    folders = {"extra/ppo (ppo)": "extra/ppo", "beta=0.05 (dpo)": "multirun/0", "beta=0.5 (dpo)": "multirun/1",
               "extra/beta2 (dpo)": "extra/beta2"}
    for key, lines in plotted.items():
        for label, line in lines.items():
            rows = [json.loads(x) for x in (root / folders[label] / "train_history.jsonl").read_text().splitlines()]
            rows = [r for r in rows if r.get(key) is not None]
            assert len(rows) >= 2, label
            assert list(line.get_xdata()) == [r["train/step"] for r in rows], label
            assert list(line.get_ydata()) == pytest.approx([r[key] for r in rows]), label
    result = compare.write_comparison(root, tmp_path / "out")
    assert (tmp_path / "out" / "training_curves.png").read_bytes()[:8] == PNG
    assert "training_curves" in result["plots"]


def test_incomplete_run_is_listed_not_fatal(sweep, tmp_path):
    root = _copy(sweep, tmp_path / "s")
    failed = root / "multirun" / "2" / ".hydra"  # a job that died before writing summary.json
    failed.mkdir(parents=True)
    overrides = OmegaConf.load(root / "multirun" / "0" / ".hydra" / "overrides.yaml")
    (failed / "overrides.yaml").write_text(OmegaConf.to_yaml([o.replace("0.05", "5.0") for o in overrides]))
    proc = subprocess.run([sys.executable, "-m", "rlaif.compare", str(root)], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "incomplete" in proc.stdout and "3 of 4 runs complete" in proc.stdout
    with open(root / "comparison" / "comparison.csv", newline="") as f:
        rows = {row["label"]: row for row in csv.DictReader(f)}
    assert rows["beta=5.0"]["status"].startswith("incomplete") and rows["beta=5.0"]["eval/kl"] == ""
    assert rows["beta=0.05"]["status"] == "ok"
    plotted = [t.get_text() for t in compare.plot_gold_vs_kl(load_runs(root)).axes[0].texts]
    assert "beta=5.0" not in plotted and "beta=0.05" in plotted


def test_no_runs_is_a_clear_error_with_exit_code_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "nothing").mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "rlaif.compare", str(empty)], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert str(empty.resolve()) in proc.stderr and "summary.json" in proc.stderr and "Traceback" not in proc.stderr
    assert main([str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_labels_name_what_differs():
    def rec(name, *overrides):
        return RunRecord(path=Path(name), name=name, overrides=list(overrides),
                         config={"seed": 0, "optimizer.name": "x", "judge.name": "y"})

    runs = [rec("0", "optimizer=dpo", "optimizer.beta=0.1", "tracker=none"),
            rec("1", "optimizer=ppo", "optimizer.target_kl=4", "tracker=none"),
            rec("2", "optimizer=ppo", "optimizer.target_kl=8", "tracker=none", "seed=1"),
            rec("3", "optimizer=ppo", "optimizer.target_kl=8", "tracker=none", "seed=1"),
            rec("4", "optimizer=grpo", "judge.lr=1", "optimizer.lr=2", "tracker=none",
                "policy.model=/a/very/long/path/to/model-7b")]
    assert make_labels(runs) == ["dpo beta=0.1", "ppo target_kl=4", "ppo target_kl=8 seed=1 [2]",
                                 "ppo target_kl=8 seed=1 [3]", "grpo judge.lr=1 optimizer.lr=2 model=model-7b"]
    assert make_labels(runs[:1]) == ["0"]  # a single run: its folder


def test_latest_sweep_is_the_newest_folder_of_runs(tmp_path):
    for i, sweep_dir in enumerate(["2026-01-02/10-00-00", "2026-01-01/09-00-00"]):
        job = tmp_path / "multirun" / sweep_dir / "0"
        job.mkdir(parents=True)
        (job / "summary.json").write_text("{}")
        os.utime(job.parent, (1e9 + i, 1e9 + i))
    assert compare.latest_sweep(tmp_path / "multirun") == tmp_path / "multirun" / "2026-01-01/09-00-00"
    with pytest.raises(compare.NoRunsError, match="No sweeps found"):
        compare.latest_sweep(tmp_path / "nothing")


def test_notebook_runs_headless_and_saves_plots(sweep, tmp_path, monkeypatch):
    try:
        import nbclient
        import nbformat
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError as e:
        pytest.fail(f"{e}: the notebook test needs nbclient, nbformat and ipykernel: pip install -e '.[dev]'")
    if "python3" not in KernelSpecManager().find_kernel_specs():
        pytest.fail("no 'python3' Jupyter kernel: pip install ipykernel (or python -m ipykernel install --user)")
    path = REPO / "notebooks" / "compare.ipynb"
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit the notebook with outputs cleared"

    root = _copy(sweep, tmp_path / "s")
    monkeypatch.setenv("RLAIF_SWEEP", str(root))
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])  # the kernel imports this checkout
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    markdown = [o for c in code for o in c.outputs if "text/markdown" in o.get("data", {})]
    assert markdown and "beta=0.05" in markdown[0]["data"]["text/markdown"]
    saved = sorted(p.stem for p in (root / "comparison").glob("*.png"))
    assert set(PLOTS) <= set(saved) and len(images) == len(saved)
    for p in (root / "comparison").glob("*.png"):
        assert p.read_bytes()[:8] == PNG
    assert (root / "comparison" / "comparison.csv").read_text().count("\n") == 1 + 3


def test_callback_wrote_comparison_when_the_sweep_ended(sweep):
    out = sweep.multirun / "comparison"
    assert "Sweep comparison" in sweep.output and str(out / "comparison.md") in sweep.output
    md = (out / "comparison.md").read_text()
    assert "beta=0.05" in md and "beta=0.5" in md and "2 of 2 runs complete" in md
    assert all((out / f"{name}.png").read_bytes()[:8] == PNG for name in PLOTS)


def test_callback_never_raises(sweep, tmp_path, caplog):
    cb = SweepSummary()
    cb.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "empty")}}}))
    assert "no run of the sweep" in caplog.text
    cb.on_multirun_end(OmegaConf.create({"seed": 0}))  # no hydra node at all
    assert "no hydra.sweep.dir" in caplog.text

    # every job failed: the table lists them, with a warning
    failed = tmp_path / "failed"
    for i in range(2):
        (failed / str(i) / ".hydra").mkdir(parents=True)
        (failed / str(i) / ".hydra" / "overrides.yaml").write_text(f"- optimizer.beta={i}\n")
    caplog.clear()
    cb.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(failed)}}}))
    assert "0 of 2 runs complete" in (failed / "comparison" / "comparison.md").read_text()
    assert "finished" in caplog.text


def test_callback_after_a_failed_job_rewrites_after_each_job(sweep, tmp_path):
    # Hydra's basic sweeper skips on_multirun_end once a job raised; the table must still appear.
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode

    root = _copy(sweep, tmp_path / "s") / "multirun"
    cfg = OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(root)}}})
    cb = SweepSummary()
    cb.on_job_end(cfg, JobReturn(status=JobStatus.COMPLETED))
    assert not (root / "comparison").exists()  # nothing failed: wait for on_multirun_end
    cb.on_job_end(cfg, JobReturn(status=JobStatus.FAILED))
    assert (root / "comparison" / "comparison.md").is_file()
    run_mode = OmegaConf.create({"hydra": {"mode": RunMode.RUN, "sweep": {"dir": str(tmp_path / "x")}}})
    SweepSummary().on_job_end(run_mode, JobReturn(status=JobStatus.FAILED))  # single runs: nothing to compare
    assert not (tmp_path / "x").exists()
