"""Generators: how candidate responses are sampled (transformers, vLLM, an OpenAI-compatible API)."""

from rlaif.generators.hf import HFGenerator
from rlaif.generators.vllm import VLLMGenerator  # imports vLLM only when it samples

__all__ = ["HFGenerator", "VLLMGenerator"]
