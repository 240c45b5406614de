"""Sampling candidates from an OpenAI-compatible chat-completions endpoint.

One request per candidate (``n`` > 1 is not supported by every server), at most
``max_concurrency`` in flight, each with ``seed = seed * 1000 + candidate index`` for servers that
honour seeds (hosted APIs treat it as best effort, so API runs are not bit-reproducible).

A request that fails after its retries yields no candidate -- never an empty-string stand-in;
``failures`` says how many were lost in the last ``sample`` call, and ``accounting()`` gives the
running totals (requests, retries, tokens, cost). The pipeline journals a batch only when none of
its requests failed, and stops when more than ``max_failed_share`` of them did (``client.check_failures``).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from rlaif.backends.api import ChatClient, ClientOptions, plain, public_url
from rlaif.generators.hf import SamplingOptions, take_sampling
from rlaif.types import Candidate, Prompt

log = logging.getLogger(__name__)


def _completion(data: dict) -> tuple[str, int, bool]:
    choice = data["choices"][0]
    text = choice["message"]["content"]
    if not isinstance(text, str):
        raise TypeError(f"choices[0].message.content is {type(text).__name__}, not text")
    n = data["usage"]["completion_tokens"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"usage.completion_tokens is {n!r}, not a token count")
    return text.strip(), n, choice.get("finish_reason") == "stop"


class APIGeneratorOptions(SamplingOptions, ClientOptions):
    """``generator=api``: every option, documented with its default in conf/generator/api.yaml
    (``batch_size`` and ``dtype`` are read by no one here; they keep every generator validating alike).
    The server's address and retry settings are ``ClientOptions``, shared with the API judge."""

    CONF: ClassVar[str] = "generator/api"
    extra_body: dict[str, Any] | None


class APIGenerator:
    """Keyword arguments override the YAML's defaults (``APIGeneratorOptions``); ``model`` may also
    come positionally."""

    Options = APIGeneratorOptions

    def __init__(self, model: str | None = None, **options):
        o = take_sampling(self, APIGeneratorOptions, model, options)
        if not o.model:
            raise ValueError("APIGenerator needs a model id (the server's name for the model)")
        self.extra_body = plain(o.extra_body or {})
        self.client = ChatClient(o)
        self.failures = 0  # failed requests (= missing candidates) in the last sample() call

    def __repr__(self) -> str:
        return (f"APIGenerator(model={self.model_name!r}, base_url={public_url(self.client.base_url)!r}, "
                f"api_key_env={self.client.api_key_env!r})")

    def identity(self, pool=None) -> str:
        """What produced the candidates (used in cache keys); ``pool`` is ignored."""
        return f"api:{public_url(self.client.base_url)}:{self.model_name}"

    def sampling_params(self) -> dict:
        params = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                  "top_k": self.top_k}
        if self.extra_body:
            params["extra_body"] = self.extra_body
        return params

    def _body(self, prompt: Prompt, seed: int) -> dict:
        body = {"model": self.model_name, "messages": list(prompt.messages), "max_tokens": self.max_new_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "seed": seed}
        if self.top_k:  # not an OpenAI parameter; vLLM and llama.cpp accept it
            body["top_k"] = self.top_k
        return {**body, **self.extra_body}

    def sample(self, pool, prompts: list[Prompt], k: int | None = None, seed: int = 0, source: str = "policy",
               desc: str = "generate") -> list[Candidate]:
        """k candidates per prompt (fewer where requests failed), grouped by prompt in input order."""
        k = k or self.num_candidates
        jobs = [(p, i) for p in prompts for i in range(k)]
        bodies = [self._body(p, seed * 1000 + i) for p, i in jobs]
        results = self.client.map("chat/completions", bodies, _completion, desc=desc, what="sampling requests")
        model = self.identity()
        out = [Candidate(p.id, i, text, n, finished, model, source)
               for (p, i), r in zip(jobs, results, strict=True) if r is not None
               for text, n, finished in [r]]
        self.failures = len(jobs) - len(out)
        return out

    def accounting(self) -> dict[str, float]:
        return self.client.accounting()

    def close(self) -> None:
        self.client.close()
