"""Language-model backends for model-based judges: what a judge needs from a model, local or remote.

A judge never talks to transformers or HTTP directly; it asks its backend for

* ``next_token_logprobs(chats, options)``: log p(first token of each option | chat, assistant turn);
* ``generate(chats, max_new_tokens, temperature, seed)``: free text (None = failed, never a label);
* ``sequence_logprobs(chats, continuations)``: teacher-forced (sum log p, n tokens) of a continuation
  as the assistant's reply (local models only).

``LocalBackend`` serves these from a ``ModelPool`` (weights shared with the generator when the
model is the same), ``VLLMBackend`` from a vLLM engine in the pool (``engine: vllm``); an
OpenAI-compatible API backend serves the first two.
"""

from __future__ import annotations

from rlaif.backends.local import LocalBackend

__all__ = ["LocalBackend", "BackendUnsupported", "make_backend"]


class BackendUnsupported(NotImplementedError):
    """The backend cannot provide what the judge asked for (e.g. teacher forcing over an API)."""


def make_backend(pool=None, model: str | None = None, dtype: str = "auto", batch_size: int = 16,
                 api: dict | None = None, backend=None, engine: str = "auto"):
    """The judge's backend: an explicit one, an OpenAI-compatible API (``api`` settings), or a local
    model on ``engine`` (transformers | vllm; auto: the run's choice, ``pool.engine``)."""
    if backend is not None:
        return backend
    if api:
        from rlaif.backends.api import APIBackend

        return APIBackend(model=model, **dict(api))
    if pool is None or model is None:
        raise ValueError("a model-based judge needs a model: set judge.model (and a pool), or judge.api")
    if engine == "auto":
        engine = getattr(pool, "engine", "transformers")
    if engine == "vllm":
        from rlaif.backends.vllm import VLLMBackend, require

        require("judge.engine")
        return VLLMBackend(pool, model, dtype, batch_size)
    return LocalBackend(pool, model, dtype, batch_size)
