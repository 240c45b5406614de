"""Optimizers: how the policy learns from the judge (see ``rlaif.optimizers.base`` for the interface)."""

from rlaif.optimizers.base import Budget, JudgeReward, NonFiniteLossError, Optimizer, TrainContext
from rlaif.optimizers.best_of_n import BestOfN
from rlaif.optimizers.dpo import DPOOptimizer
from rlaif.optimizers.self_rewarding import SelfRewardingDPO

__all__ = ["BestOfN", "Budget", "DPOOptimizer", "JudgeReward", "NonFiniteLossError", "Optimizer",
           "SelfRewardingDPO", "TrainContext"]
