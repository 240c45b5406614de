"""``ChatClient``: ``POST {base_url}/chat/completions`` with bounded concurrency, retries, a rate
limit and token/cost accounting, shared by the API judge backend and the API generator.

Results come back in input order; timeouts, connection errors, 429 and 5xx are retried with
exponential backoff and jitter (a ``Retry-After`` header, in seconds or as an HTTP date, is
honoured up to ``max_retry_after_s``); every wait before a retry is recorded in ``retry_waits``.
A request that fails after its retries, or whose response ``parse`` rejects, is counted and
returned as ``None``, never a default value. The API key is read from the environment at request
time and credentials in ``base_url`` are sent as basic auth; neither appears in an exception, a
log record, a ``repr`` or the accounting. The rules it keeps (no invented value, no leaked
secret) are listed in ``rlaif.backends.api``.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
from pydantic import Field, field_validator

from rlaif.backends.answer_log import AnswerLog
from rlaif.options import Count, Fraction, NonNegative, Options, Positive

log = logging.getLogger(__name__)



class Failure(Exception):
    """One request's terminal failure; ``reason`` is a short category used in the counts."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class RequestsFailed(RuntimeError):
    """Too many requests of a stage failed; the answers that came back are kept for the rerun."""


def public_url(url: str) -> str:
    """``url`` without user:password and trailing slash (safe to show and to use in cache keys)."""
    parts = urlsplit(url.rstrip("/"))
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class _RateLimiter:
    """Spaces request starts at least 60/requests_per_minute seconds apart (across threads)."""

    def __init__(self, requests_per_minute: float):
        if not requests_per_minute > 0:
            raise ValueError(f"requests_per_minute must be > 0 (or None for no limit), got {requests_per_minute}")
        self.interval = 60.0 / requests_per_minute
        self._lock = threading.Lock()
        self._next = 0.0
        self.starts: deque[float] = deque(maxlen=1000)  # the monotonic start slots given out, newest last

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
            self.starts.append(slot)
        if slot > now:
            time.sleep(slot - now)


def _int(x: Any) -> int:
    return int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else 0


class ClientOptions(Options):
    """How to reach an OpenAI-compatible server and how patiently: shared by the API judge
    (``judge.api``, defaults in conf/api/judge.yaml) and the API generator (conf/generator/api.yaml)."""

    base_url: str
    api_key_env: str | None
    max_concurrency: Count
    timeout_s: Positive
    max_retries: Annotated[int, Field(ge=0)]
    backoff_s: NonNegative
    max_retry_after_s: NonNegative
    requests_per_minute: Positive | None
    price_per_1k_prompt: NonNegative
    price_per_1k_completion: NonNegative
    max_failed_share: Fraction  # share of a stage's requests that may fail before the run stops; 0 = none

    @field_validator("base_url")
    @classmethod
    def _http(cls, v):
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {public_url(v)!r}")
        return v


class ChatClient:
    """Thread-safe client for ``POST {base_url}/chat/completions`` with retries and accounting."""

    def __init__(self, options: ClientOptions):
        o = options
        base_url = o.base_url
        parts = urlsplit(str(base_url))
        # user:password in the URL: kept apart (basic auth), so no URL this client holds carries them
        self._userinfo = ((unquote(parts.username or ""), unquote(parts.password or ""))
                          if parts.username or parts.password else None)
        self.base_url = public_url(str(base_url))
        self.max_retry_after_s = float(o.max_retry_after_s)
        self.max_failed_share = float(o.max_failed_share)
        self.answers: AnswerLog | None = None
        self.answer_logs: list[AnswerLog] = []  # every log this client served answers from (for the spend report)
        self.api_key_env = o.api_key_env or None
        self.max_concurrency = o.max_concurrency
        self.timeout_s = float(o.timeout_s)
        self.max_retries = o.max_retries
        self.backoff_s = float(o.backoff_s)
        self.price_per_1k_prompt = float(o.price_per_1k_prompt)
        self.price_per_1k_completion = float(o.price_per_1k_completion)
        self.requests_per_minute = o.requests_per_minute
        self._limiter = _RateLimiter(float(o.requests_per_minute)) if o.requests_per_minute else None
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self.reset_accounting()

    # -- plumbing ------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (f"ChatClient(base_url={public_url(self.base_url)!r}, api_key_env={self.api_key_env!r}, "
                f"max_concurrency={self.max_concurrency}, timeout_s={self.timeout_s}, max_retries={self.max_retries})")

    def __getstate__(self) -> dict:  # picklable/copyable: locks and the connection pool are rebuilt
        state = self.__dict__.copy()
        state["_lock"] = state["_client"] = None
        state["_limiter"] = state["answers"] = None  # a copy journals nothing (its stage set the original's log)
        state["answer_logs"] = []
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._limiter = _RateLimiter(float(self.requests_per_minute)) if self.requests_per_minute else None

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                n = self.max_concurrency
                self._client = httpx.Client(timeout=self.timeout_s, limits=httpx.Limits(
                    max_connections=n, max_keepalive_connections=n))
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _key(self) -> str | None:
        return (os.environ.get(self.api_key_env) or None) if self.api_key_env else None

    def _scrub(self, text: str) -> str:
        """Text safe to log or raise: the current key and the URL's credentials (if any) replaced by ***."""
        text = str(text)
        secrets = [self._key(), *(self._userinfo or ())]
        for s in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
            text = text.replace(s, "***")
        return text

    def _auth(self, key: str | None) -> httpx.Auth | None:
        if key or self._userinfo is None:  # a bearer key is the header; else no auth at all
            return None
        return httpx.BasicAuth(*self._userinfo)

    def record_answers(self, log: AnswerLog | None) -> None:
        """Journal usable answers to ``log`` and serve requests already in it from there (None: stop)."""
        self.answers = log
        if log is not None and all(log is not x for x in self.answer_logs):
            self.answer_logs.append(log)

    def reset_accounting(self) -> None:
        with self._lock:
            self.requests = 0  # logical requests (one per chat), whatever their outcome
            self.failures = 0  # requests that returned None
            self.retries = 0  # extra HTTP attempts after a retryable error
            self.prompt_tokens = 0
            self.completion_tokens = 0
            self.failure_reasons: Counter[str] = Counter()
            self.recent_errors: deque[str] = deque(maxlen=20)  # scrubbed messages, newest last
            # (reason, seconds) of every wait before a retry, newest last: what the backoff really did
            self.retry_waits: deque[tuple[str, float]] = deque(maxlen=1000)

    def accounting(self) -> dict[str, float]:
        with self._lock:
            cost = (self.prompt_tokens * self.price_per_1k_prompt
                    + self.completion_tokens * self.price_per_1k_completion) / 1000.0
            return {"requests": self.requests, "failures": self.failures, "retries": self.retries,
                    "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                    "cost_usd": cost}

    # -- one request ---------------------------------------------------------------------------

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s)
        return self.backoff_s * (2 ** attempt) * random.uniform(0.5, 1.5)

    @staticmethod
    def _retry_after(resp: httpx.Response) -> float | None:
        value = resp.headers.get("retry-after")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            seconds = when.timestamp() - time.time()
        return max(0.0, seconds) if math.isfinite(seconds) else None

    def _post_json(self, path: str, body: dict) -> dict:
        """POST with retries; the parsed JSON object, or raise Failure."""
        url = f"{self.base_url}/{path.lstrip('/')}"
        http = self._http()
        last = Failure("no attempt")
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.retries += 1
            if self._limiter is not None:
                self._limiter.wait()
            headers = {"Content-Type": "application/json"}
            key = self._key()
            if key:
                headers["Authorization"] = f"Bearer {key}"
            retry_after = None
            try:
                resp = http.post(url, json=body, headers=headers, auth=self._auth(key))
            except httpx.TimeoutException as e:
                last = Failure("timeout", f"no answer within {self.timeout_s:g} s ({type(e).__name__})")
            except httpx.TransportError as e:  # connection refused/reset, protocol errors
                last = Failure("connection error", f"{type(e).__name__}: {self._scrub(e)}")
            else:
                if resp.status_code == 429 or resp.status_code >= 500:
                    retry_after = self._retry_after(resp)
                    last = Failure(f"http {resp.status_code}", self._scrub(resp.text[:200]))
                elif resp.status_code >= 400:  # the request itself is wrong: retrying cannot help
                    raise Failure(f"http {resp.status_code}", self._scrub(resp.text[:300]))
                else:
                    try:
                        data = resp.json()
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        raise Failure("invalid json", f"status {resp.status_code}, body "
                                                      f"{self._scrub(resp.text[:120])!r}") from None
                    if not isinstance(data, dict):
                        raise Failure("invalid json", f"expected an object, got {type(data).__name__}")
                    return data
            if attempt < self.max_retries:
                wait = self._delay(attempt, retry_after)
                with self._lock:
                    self.retry_waits.append((last.reason, wait))
                time.sleep(wait)
        raise last

    def call(self, path: str, body: dict, parse: Callable[[dict], Any]) -> Any:
        """One logical request: ``parse(response)``, or None (failure counted and recorded).

        ``parse`` raises (KeyError, IndexError, TypeError, ValueError) when the response lacks
        the expected fields; that is a failure too, never a default value.
        """
        answers = self.answers
        key = AnswerLog.key(f"{self.base_url}/{path.lstrip('/')}", body) if answers is not None else ""
        if answers is not None and (data := answers.get(key)) is not None:
            return parse(data)  # answered in an earlier attempt: not sent, not counted again
        with self._lock:
            self.requests += 1
        try:
            data = self._post_json(path, body)
            usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
            spent = {"requests": 1, "prompt_tokens": _int(usage.get("prompt_tokens")),
                     "completion_tokens": _int(usage.get("completion_tokens"))}
            with self._lock:  # billed even if the body turns out to be unusable
                self.prompt_tokens += spent["prompt_tokens"]
                self.completion_tokens += spent["completion_tokens"]
            try:
                out = parse(data)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
                raise Failure("malformed response", f"{type(e).__name__}: {self._scrub(e)}") from None
            if answers is not None:
                spent["cost_usd"] = (spent["prompt_tokens"] * self.price_per_1k_prompt
                                     + spent["completion_tokens"] * self.price_per_1k_completion) / 1000.0
                answers.put(key, data, spent)
            return out
        except Failure as f:
            with self._lock:
                self.failures += 1
                self.failure_reasons[f.reason] += 1
                self.recent_errors.append(self._scrub(f))
            log.debug("request to %s failed: %s", public_url(self.base_url), self._scrub(f))
            return None

    def map(self, path: str, bodies: Sequence[dict], parse: Callable[[dict], Any], desc: str | None = None,
            what: str = "requests") -> list[Any]:
        """``call`` for every body with at most ``max_concurrency`` in flight; results in input order.

        Logs one warning with counts when any request of this batch failed.
        """
        if not bodies:
            return []
        before_fail = self.failures
        before = Counter(self.failure_reasons)
        out: list[Any] = [None] * len(bodies)
        bar = None
        if desc is not None:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(bodies), desc=desc, unit="req")
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(bodies))) as pool:
            futures = {pool.submit(self.call, path, b, parse): i for i, b in enumerate(bodies)}
            for fut in as_completed(futures):
                out[futures[fut]] = fut.result()
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        failed = self.failures - before_fail
        if failed:
            reasons = self.failure_reasons - before
            log.warning("%d of %d %s to %s failed after up to %d retries (%s); they are returned as None. "
                        "Last error: %s", failed, len(bodies), what, public_url(self.base_url), self.max_retries,
                        ", ".join(f"{r}: {n}" for r, n in reasons.most_common()),
                        self.recent_errors[-1] if self.recent_errors else "?")
        return out

    def check_failures(self, failed: int, requests: int, what: str, setting: str) -> None:
        """Raise ``RequestsFailed`` when ``failed`` of ``requests`` is more than ``max_failed_share``.

        ``what`` names the stage's requests ("judge requests"), ``setting`` the config key of the
        share (e.g. ``judge.api.max_failed_share``), so the message says what to change.
        """
        if failed <= 0 or failed <= self.max_failed_share * requests:
            return
        reasons = ", ".join(f"{r}: {n}" for r, n in self.failure_reasons.most_common())
        last = self.recent_errors[-1] if self.recent_errors else "?"
        raise RequestsFailed(
            f"{failed} of {requests} {what} to {public_url(self.base_url)} failed after up to {self.max_retries} "
            f"retries ({reasons}; last error: {last}), more than {setting}={self.max_failed_share:g} of them. "
            "Nothing was trained on what is left. The answers that came back are kept: once the server answers "
            "again, rerun the same command and only the failed requests are sent again.")
