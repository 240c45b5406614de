"""Generators: how candidate responses are sampled."""

from rlaif.generators.hf import HFGenerator

__all__ = ["HFGenerator"]
