"""Optimizers: how the policy learns from the judge (see ``rlaif.optimizers.base`` for the interface).

Offline: ``DPOOptimizer``. Online, with the judge (or a reward model trained on its preferences) as
reward: ``PPOOptimizer`` (ours), ``GRPOOptimizer``, ``RLOOOptimizer``, ``OnlineDPOOptimizer`` (TRL).
Baseline: ``BestOfN``. Iterative: ``SelfRewardingDPO``. Supervised: ``ConstitutionalSFT``.
"""

from rlaif.optimizers.base import Budget, JudgeReward, NonFiniteLossError, Optimizer, TrainContext
from rlaif.optimizers.best_of_n import BestOfN
from rlaif.optimizers.constitutional import ConstitutionalSFT
from rlaif.optimizers.dpo import DPOOptimizer
from rlaif.optimizers.online_dpo import OnlineDPOOptimizer
from rlaif.optimizers.ppo import PPOOptimizer
from rlaif.optimizers.reward_model import RewardModelTrainer
from rlaif.optimizers.self_rewarding import SelfRewardingDPO
from rlaif.optimizers.trl_online import GRPOOptimizer, RLOOOptimizer

__all__ = ["BestOfN", "Budget", "ConstitutionalSFT", "DPOOptimizer", "GRPOOptimizer", "JudgeReward",
           "NonFiniteLossError", "OnlineDPOOptimizer", "Optimizer", "PPOOptimizer", "RLOOOptimizer",
           "RewardModelTrainer", "SelfRewardingDPO", "TrainContext"]
