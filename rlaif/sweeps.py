"""The number a run hands back to a Hydra sweeper: the summary metric named by ``sweep.metric``.

``check_metric`` runs before any model loads, so a misspelt metric costs a second, not a sweep of
runs that all score nothing. ``metric_value`` reads it from the finished run's summary; a metric
the run did not produce, or one that is NaN or infinite, comes back as None, which the Optuna
sweeper records as a failed trial before going on. (Not NaN: hydra-optuna-sweeper 1.3 then tells
Optuna the NaN a second time while marking the trial failed, and the whole sweep crashes. Not an
exception either: with max_failure_rate 0 that stops the sweep.) This module only reads the config
and the summary.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlaif.config import ConfigError

log = logging.getLogger(__name__)

# Every key the evaluation stage reports (rlaif/evaluation); eval/heldout_* need evaluation.heldout_judge.
EVAL_METRICS = (
    "eval/gold_reward_policy", "eval/gold_reward_reference", "eval/gold_reward_gain",
    "eval/gold_reward_policy_sem", "eval/gold_reward_reference_sem", "eval/win_rate", "eval/lc_win_rate",
    "eval/length_coef", "eval/judge_preference", "eval/win_rate_invalid", "eval/judge_score_policy",
    "eval/judge_score_reference", "eval/heldout_win_rate", "eval/heldout_preference", "eval/heldout_invalid",
    "eval/kl", "eval/length_policy", "eval/length_reference", "eval/samples_per_policy",
)
# Other namespaces differ by optimizer and judge (train/loss, train/rewards/margins, judge/accuracy_vs_gold, ...).
NAMESPACES = ("eval", "train", "judge", "preferences", "generate", "time")
COMMON = ("eval/gold_reward_policy (maximize)", "eval/gold_reward_gain (maximize)", "eval/win_rate (maximize)",
          "eval/lc_win_rate (maximize)", "eval/heldout_win_rate (maximize)", "eval/kl (minimize)",
          "judge/accuracy_vs_gold (maximize)")


# Choices that need a Hydra plugin from the `sweeps` extra: {override: (plugin module, PyPI package)}.
OPTUNA = ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper")
SUBMITIT = ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher")
PLUGIN_CHOICES = {"experiment=optuna": OPTUNA, "hydra/sweeper=rlaif_optuna": OPTUNA, "hydra/sweeper=optuna": OPTUNA,
                  "hydra/launcher=slurm": SUBMITIT, "hydra/launcher=submitit_slurm": SUBMITIT,
                  "hydra/launcher=submitit_local": SUBMITIT}


def missing_plugin(overrides: Iterable[str]) -> str | None:
    """What to install when an override picks a config whose Hydra plugin is absent, else None."""
    for o in overrides:
        module, package = PLUGIN_CHOICES.get(o.replace(" ", "").removeprefix("+"), (None, None))
        if module and importlib.util.find_spec(module) is None:
            return (f"{o} needs the Hydra plugin {package}, which is not installed: "
                    f"pip install -e '.[sweeps]' (or pip install {package})")
    return None


def check_metric(cfg: DictConfig) -> str | None:
    """The metric to return (None when the config names none); ConfigError if it cannot be one."""
    metric = OmegaConf.select(cfg, "sweep.metric", default=None)
    direction = OmegaConf.select(cfg, "sweep.direction", default="maximize")
    if metric is None:
        return None
    hint = "Common choices: " + ", ".join(COMMON) + "; any key of a run's summary.json works."
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"sweep.direction: expected maximize or minimize, got {direction!r}")
    if not isinstance(metric, str) or metric.split("/")[0] not in NAMESPACES or "/" not in metric:
        raise ConfigError(f"sweep.metric: {metric!r} is not a metric a run reports. {hint}")
    if metric.startswith("eval/") and metric not in EVAL_METRICS:
        raise ConfigError(f"sweep.metric: the evaluation reports no {metric!r}. It reports "
                          f"{', '.join(EVAL_METRICS)}.")
    if metric.startswith("eval/heldout_") and not OmegaConf.select(cfg, "evaluation.heldout_judge", default=None):
        raise ConfigError(f"sweep.metric: {metric} needs a held-out judge (evaluation.heldout_judge, as in "
                          f"experiment=compare). {hint}")
    return metric


def metric_value(summary: dict[str, Any], metric: str | None) -> float | None:
    """``summary[metric]`` as a float; None (a failed trial) with a warning if it is absent or not finite."""
    if metric is None:
        return None
    v = summary.get(metric)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    if v is not None:
        log.warning("sweep.metric %s is %r for this run; a sweeper counts the run as failed", metric, v)
        return None
    ns = metric.split("/")[0] + "/"
    reported = sorted(k for k in summary if k.startswith(ns)) or sorted(summary)
    log.warning("sweep.metric %s is not in this run's summary, which has %s; a sweeper counts the run as failed",
                metric, ", ".join(reported))
    return None
