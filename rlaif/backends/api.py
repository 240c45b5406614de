"""An OpenAI-compatible chat-completions endpoint as a judge backend (vLLM serve, llama.cpp server,
Ollama, hosted APIs).

``ChatClient`` is the HTTP part shared with ``rlaif.generators.api``: bounded concurrency (results
in input order), retries with exponential backoff and jitter on timeouts, connection errors, 429
and 5xx (a ``Retry-After`` header, in seconds or as an HTTP date, is honoured up to
``max_retry_after_s``), an optional client-side rate limit, and token/cost accounting from each
response's ``usage``. Every wait before a retry is recorded in ``retry_waits``.

A pipeline stage gives the client an ``AnswerLog`` (``record_answers``): each usable answer is
journaled by its request, so a rerun after failed requests sends only those again and gets the
other answers back exactly. ``check_failures`` stops a stage whose share of failed requests is above
``max_failed_share``.

What it must not do:

* invent a value: a request that fails after its retries, or a response that is not JSON or lacks
  the expected fields, is counted as a failure and returned as ``None`` -- never a label, a
  default probability or an empty string;
* leak the API key: it is read from the environment variable named by ``api_key_env`` at request
  time and appears in no exception, log record, ``repr``, ``identity`` or accounting;
* leak credentials written into ``base_url`` (``http://user:password@host/v1``): they are taken out
  of the URL when the client is built and sent as HTTP basic auth (when no API key is set), so the
  URL that is requested, logged, shown and used in identities has none.

``base_url`` includes the API version prefix, as in the ``openai`` client:
``http://127.0.0.1:8080/v1`` -> requests go to ``http://127.0.0.1:8080/v1/chat/completions``.

The parts: ``rlaif.backends.chat_client`` (``ChatClient``: HTTP, retries, accounting),
``rlaif.backends.answer_log`` (``AnswerLog``) and ``rlaif.backends.chat_responses`` (reading
replies and log-probs); this module holds ``APIBackend`` and re-exports their names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar

from pydantic import Field

from rlaif.backends import BackendUnsupported
from rlaif.backends.answer_log import AnswerLog
from rlaif.backends.chat_client import ChatClient, ClientOptions, Failure, RequestsFailed, public_url
from rlaif.backends.chat_responses import (
    _finite_number,
    _message_text,
    _top_logprobs,
    option_logprobs,
    token_text,
)

__all__ = ["APIBackend", "APIOptions", "ClientOptions", "AnswerLog", "ChatClient", "Failure", "RequestsFailed",
           "option_logprobs", "plain", "public_url", "token_text"]


def plain(obj: Any) -> Any:
    """A config value (possibly an OmegaConf node) as plain JSON-able dicts and lists."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        return [plain(v) for v in obj]
    return obj


class APIOptions(ClientOptions):
    """``judge.api``: a judge served by an OpenAI-compatible server (defaults: conf/api/judge.yaml)."""

    CONF: ClassVar[str] = "api/judge"
    model: str | None  # the server's name for the model; null = judge.model
    top_logprobs: Annotated[int, Field(ge=1, le=20)]  # 20 is the OpenAI limit
    extra_body: dict[str, Any] | None


class APIBackend:
    """Judge backend over an OpenAI-compatible server: next-token log-probs and generation.

    Keyword arguments are ``judge.api`` keys (``APIOptions``; the others come from conf/api/judge.yaml)."""

    def __init__(self, model: str | None = None, **options):
        o = APIOptions.build({**options, "model": model} if model is not None else options, "judge.api")
        if not o.model:
            raise ValueError("APIBackend needs a model id (the server's name for the model): set judge.model or "
                             "judge.api.model")
        self.options = o
        self.model_name = o.model
        self.top_logprobs = o.top_logprobs
        self.last_bounded: list[tuple[int, str]] = []
        self.extra_body = plain(o.extra_body or {})
        self.client = ChatClient(o)

    def __repr__(self) -> str:
        return (f"APIBackend(model={self.model_name!r}, base_url={public_url(self.client.base_url)!r}, "
                f"api_key_env={self.client.api_key_env!r})")

    @property
    def name(self) -> str:
        return self.model_name

    @property
    def identity(self) -> str:
        return f"api:{public_url(self.client.base_url)}:{self.model_name}"

    def _body(self, chat: list[dict], **params) -> dict:
        return {"model": self.model_name, "messages": list(chat), **params, **self.extra_body}

    def next_token_logprobs(self, chats: list[list[dict]], options: list[str],
                            assistant_prefix: str = "") -> list[list[float | None]]:
        """log p(option | chat) for each option, from the server's top log-probs of the first token.

        An entry is None when the request failed or the option is not among the top
        ``top_logprobs`` tokens the server returned -- except in a two-way choice (a pairwise
        verdict) where one option is in the list and the other is not: the missing one then ranks
        below every returned token, so it gets the list's smallest log-prob, an upper bound on its
        own. The verdict is then the least confident one the answer allows, where None would drop
        a clear answer (a small model's "2" often sits near the 20th place, in or out by rounding
        differences between CPUs). ``last_bounded`` lists the (item, option) pairs so filled.
        """
        if assistant_prefix:
            raise BackendUnsupported(
                "APIBackend cannot continue a partial assistant turn (assistant_prefix): chat-completion "
                "APIs have no portable prefill; use a local model (judge.model) for this judge")
        bodies = [self._body(c, max_tokens=1, temperature=0, logprobs=True, top_logprobs=self.top_logprobs)
                  for c in chats]

        def parse(d: dict):  # inside the request, so a garbage log-prob counts as a failed request
            top = _top_logprobs(d)
            lps = option_logprobs(top, options)
            cut = min((float(e["logprob"]) for e in top if _finite_number(e.get("logprob"))), default=None)
            return lps, cut

        res = self.client.map("chat/completions", bodies, parse, what="log-prob requests")
        out, self.last_bounded = [], []
        for i, r in enumerate(res):
            if r is None:
                out.append([None] * len(options))
                continue
            lps, cut = r
            missing = [k for k, lp in enumerate(lps) if lp is None]
            if len(options) == 2 and len(missing) == 1 and cut is not None:
                lps = list(lps)
                lps[missing[0]] = cut
                self.last_bounded.append((i, options[missing[0]]))
            out.append(lps)
        return out

    def generate(self, chats: list[list[dict]], max_new_tokens: int = 256, temperature: float = 0.0,
                 seed: int = 0) -> list[str | None]:
        """The assistant's reply to each chat (stripped); None where the request failed."""
        bodies = [self._body(c, max_tokens=int(max_new_tokens), temperature=float(temperature), seed=int(seed))
                  for c in chats]
        res = self.client.map("chat/completions", bodies, _message_text, what="generation requests")
        return [None if t is None else t.strip() for t in res]

    def sequence_logprobs(self, chats: list[list[dict]], continuations: list[str],
                          desc: str | None = None) -> list[tuple[float, int]]:
        raise BackendUnsupported(
            "APIBackend cannot score a given continuation (teacher forcing): chat-completion APIs only "
            "return log-probs of tokens they sample. The contrastive judge needs a local model: set "
            "judge.model to a local folder, hub id or embedded name and remove judge.api")

    def accounting(self) -> dict[str, float]:
        return self.client.accounting()

    def close(self) -> None:
        self.client.close()
