"""The stages of a run, in data-flow order, and the runner that executes them.

Each stage is one file: ``generate`` (candidates), ``judge`` (judgments, verdicts),
``preferences`` (pairs, gold scores), ``diagnostics`` (judge-bias metrics and probes),
``reward_model`` (distilled RLAIF), ``train`` (the policy), ``evaluate`` (reference samples, then
the trained policy against them). A stage declares its inputs (rlaif/stages/base.py); the runner
(rlaif/stages/runner.py) derives the cache key from them and does the rest.
"""

from rlaif.stages.base import Inputs, Stage, UndeclaredInput, View
from rlaif.stages.context import RunContext
from rlaif.stages.diagnostics import Diagnostics, run_probes
from rlaif.stages.evaluate import Evaluate, EvaluateReference
from rlaif.stages.generate import Generate
from rlaif.stages.judge import Judge, api_spend
from rlaif.stages.preferences import Preferences
from rlaif.stages.reward_model import RewardModel
from rlaif.stages.runner import run_stage
from rlaif.stages.train import Train, labelling_cost, online_reward

__all__ = ["Diagnostics", "Evaluate", "EvaluateReference", "Generate", "Inputs", "Judge", "Preferences",
           "RewardModel", "RunContext", "Stage", "Train", "UndeclaredInput", "View", "api_spend", "labelling_cost",
           "online_reward", "run_probes", "run_stage"]
