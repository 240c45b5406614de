"""Optimizers: how the policy learns from the judge's preferences."""

from rlaif.optimizers.dpo import DPOOptimizer

__all__ = ["DPOOptimizer"]
