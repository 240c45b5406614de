"""Sweeps beyond the basic launcher: a real Optuna sweep on the tiny model (the metric each run
returns, the best trial, the sweep summary and W&B grouping), the metric check that runs before any
model loads, the SLURM launcher preset down to the sbatch script it would submit, and a real
sweep through submitit's local launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import compose_config
from omegaconf import OmegaConf
from test_pipeline import wandb_inspect

from rlaif.config import ConfigError
from rlaif.sweeps import check_metric, metric_value, missing_plugin

SWEEP = Path("2026-01-02") / "03-04-05"  # sweep folder's last two parts: the W&B group is sweep-2026-01-02_03-04-05


def rlaif(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlaif", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def overrides_of(job: Path) -> dict[str, str]:
    return dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))


def test_optuna_sweep_returns_the_metric_and_records_the_best_trial(tiny_overrides, tmp_path):
    sweep = tmp_path / "multirun" / SWEEP
    # eval/kl differs between trials on the tiny model (its gold reward is 0 everywhere); the command
    # line fixes optimizer.learning_rate, so only beta is searched.
    proc = rlaif(["-m", "experiment=optuna", "hydra.sweeper.n_trials=2", "sweep.metric=eval/kl",
                  "sweep.direction=minimize", "diagnostics=none", f"hydra.sweep.dir={sweep}", *tiny_overrides], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert [j.name for j in jobs] == ["0", "1"]
    kl = {j: json.loads((j / "summary.json").read_text())["eval/kl"] for j in jobs}
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.name == "optuna"
    assert best.best_value == min(kl.values())  # what run() reported is exactly what Optuna got
    best_job = min(jobs, key=lambda j: kl[j])
    assert best.best_params["optimizer.beta"] == pytest.approx(float(overrides_of(best_job)["optimizer.beta"]))
    for job in jobs:
        assert 0.02 <= float(overrides_of(job)["optimizer.beta"]) <= 0.5  # from the search space
        assert OmegaConf.load(job / "resolved_config.yaml").optimizer.learning_rate == 1e-3  # fixed, not searched
        records = json.dumps(wandb_inspect(job, summary_only=False), separators=(",", ":"))
        assert '"run_group":"sweep-2026-01-02_03-04-05"' in records and '"job_type":"dpo"' in records
    # rlaif.compare.SweepSummary fires after the Optuna sweeper too
    table = (sweep / "comparison" / "comparison.md").read_text()
    assert "2 of 2 runs complete" in table
    assert json.loads((sweep / "comparison" / "comparison.json").read_text())["complete"] == 2


def test_unknown_metric_stops_the_sweep_before_any_run(tmp_path):
    sweep = tmp_path / "multirun"
    proc = rlaif(["-m", "experiment=optuna", "sweep.metric=eval/gold_reward", f"hydra.sweep.dir={sweep}",
                  "tracker=none"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "sweep.metric" in proc.stderr and "eval/gold_reward_policy" in proc.stderr  # lists the valid ones
    assert "Traceback" not in proc.stderr
    assert not list(sweep.glob("*/prompts.jsonl"))  # stopped before the first stage


@pytest.mark.parametrize("metric, message", [
    ("eval/gold_reward", "reports eval/gold_reward_policy"),
    ("gold_reward_policy", "eval/gold_reward_policy (maximize)"),
    ("eval/heldout_win_rate", "evaluation.heldout_judge"),
    (3, "is not a metric"),
])
def test_check_metric_names_the_choices(metric, message):
    cfg = compose_config(["experiment=optuna"])
    assert check_metric(cfg) == "eval/gold_reward_policy"
    cfg.sweep.metric = metric
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_metric(cfg)


def test_check_metric_accepts_what_the_run_reports():
    cfg = compose_config(["experiment=compare", "++sweep.metric=eval/heldout_win_rate", "++sweep.direction=maximize"])
    assert check_metric(cfg) == "eval/heldout_win_rate"
    for metric in ("train/loss", "judge/accuracy_vs_gold", "preferences/pairs"):
        cfg.sweep.metric = metric
        assert check_metric(cfg) == metric
    cfg.sweep.direction = "up"
    with pytest.raises(ConfigError, match="maximize or minimize"):
        check_metric(cfg)


def test_metric_value_is_none_when_the_run_lacks_it(caplog):
    summary = {"eval/kl": 1.5, "eval/win_rate": float("nan"), "eval/samples_per_policy": 12}
    assert metric_value(summary, "eval/kl") == 1.5
    assert metric_value(summary, "eval/samples_per_policy") == 12.0
    assert metric_value(summary, None) is None
    assert metric_value(summary, "eval/win_rate") is None
    assert metric_value(summary, "eval/lc_win_rate") is None
    assert "eval/kl, eval/samples_per_policy, eval/win_rate" in caplog.text  # says what the run did report


def test_optuna_sweep_goes_on_past_a_run_without_the_metric(tiny_overrides, tmp_path):
    """A missing (or NaN) metric fails that trial only; the sweep still runs every trial."""
    sweep = tmp_path / "multirun"
    proc = rlaif(["-m", "experiment=optuna", "hydra.sweeper.n_trials=2", "sweep.metric=train/not_reported",
                  "diagnostics=none", "tracker=none", f"hydra.sweep.dir={sweep}", *tiny_overrides], tmp_path)
    log = proc.stdout + proc.stderr
    assert sorted(p.parent.name for p in sweep.glob("*/summary.json")) == ["0", "1"], log[-3000:]
    assert "sweep.metric train/not_reported is not in this run's summary" in log
    assert log.count("Failed experiment") == 2  # Optuna recorded each trial as failed, then asked for the next
    # with no trial scored there is no best one: the sweep ends with Optuna's error, after every trial
    assert proc.returncode == 1 and "No trials are completed yet" in proc.stderr, log[-3000:]


def test_missing_plugin_says_what_to_install(monkeypatch):
    assert missing_plugin(["experiment=optuna", "hydra/launcher=slurm"]) is None  # both installed here
    monkeypatch.setitem(__import__("rlaif.sweeps").sweeps.PLUGIN_CHOICES, "hydra/launcher=slurm",
                        ("hydra_plugins.not_installed_here", "hydra-submitit-launcher"))
    message = missing_plugin(["seed=1", "hydra/launcher=slurm"])
    assert "hydra-submitit-launcher" in message and ".[sweeps]" in message


def test_slurm_preset_makes_a_valid_sbatch_script(tmp_path, monkeypatch):
    """The preset composes onto the plugin's launcher, and submitit accepts every key it sets."""
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    from rlaif.config import conf_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm", "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "hydra.launcher.setup=[module load cuda/12.4]", "+hydra.launcher.additional_parameters.mail-type=END"])
    GlobalHydra.instance().clear()
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    HydraConfig.instance().set_config(cfg)
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"  # (Hydra's plugin scan may load the module twice)
    assert {"partition", "account", "timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb", "setup"} <= set(launcher.params)

    # What SlurmLauncher.launch hands to submitit (it needs `srun` on PATH to build a SLURM executor).
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    params = dict(launcher.params)
    executor = submitit.AutoExecutor(folder=params.pop("submitit_folder"), cluster="slurm",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})  # rejects unknown keys
    script = executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=32GB", "#SBATCH --time=120", "#SBATCH --job-name=rlaif", "#SBATCH --mail-type=END",
                 "module load cuda/12.4", f"#SBATCH --output={tmp_path / 'sweep'}/.submitit/%j/%j_0_log.out"):
        assert line in script, line


def test_submitit_local_launcher_runs_a_sweep(tiny_overrides, tmp_path):
    """The code path SLURM jobs take (pickled job, run_job in another process), on this machine."""
    sweep = tmp_path / "multirun" / SWEEP
    proc = rlaif(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "diagnostics=none",
                  f"hydra.sweep.dir={sweep}", *tiny_overrides], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = sweep / "0"
    assert (job / "summary.json").is_file()
    assert list((sweep / ".submitit").glob("*/*_0_log.out"))  # it really ran through submitit
    records = json.dumps(wandb_inspect(job, summary_only=False), separators=(",", ":"))
    assert '"run_group":"sweep-2026-01-02_03-04-05"' in records and '"job_type":"dpo"' in records
    assert (sweep / "comparison" / "comparison.md").is_file()
