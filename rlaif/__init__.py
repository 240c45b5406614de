"""rlaif: reproducible experiments in reinforcement learning from AI feedback."""

__version__ = "0.1.0"
