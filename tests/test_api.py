"""The OpenAI-compatible backend and generator against real HTTP servers.

Failure handling is tested against small servers started here on 127.0.0.1 (http.server in a
thread), each misbehaving in one way; the happy path against llama-cpp-python's real server on
the embedded SmolLM2 GGUF (skipped when that server is not installed).
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from llama_server import MODEL_ID, free_port, llama_server  # noqa: F401

from rlaif.backends import BackendUnsupported, make_backend
from rlaif.backends.api import APIBackend, ChatClient, option_logprobs
from rlaif.criteria import Criterion
from rlaif.generators.api import APIGenerator
from rlaif.judges.pairwise import PairwiseJudge
from rlaif.types import Prompt

CHAT = [{"role": "user", "content": "Say hello."}]
KEY = "sk-test-secret-value-0123456789abcdef"


def completion(content: str = "hello there", top: list[tuple[str, float]] | None = None, prompt_tokens: int = 7,
               completion_tokens: int = 3, finish_reason: str = "stop") -> dict:
    """A well-formed OpenAI chat.completion body."""
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
    if top is not None:
        choice["logprobs"] = {"content": [{"token": top[0][0], "logprob": top[0][1],
                                           "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}]}
    return {"id": "x", "object": "chat.completion", "model": "m", "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


Reply = tuple[int, dict[str, str], bytes]


class FakeServer:
    """A real HTTP server whose every POST is answered by ``respond(request_json, headers, n)``."""

    def __init__(self, respond: Callable[[dict, dict, int], Reply]):
        self.respond = respond
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server.lock:
                    n = len(server.requests)
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, headers, payload = server.respond(body, dict(self.headers), n)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def ok(body: dict | None = None, status: int = 200, headers: dict | None = None) -> Reply:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body or completion()).encode()


@contextmanager
def serving(respond):
    with FakeServer(respond) as s:
        yield s


def backend(url: str, **kw) -> APIBackend:
    kw = {"api_key_env": None, "max_retries": 2, "backoff_s": 0.01, "timeout_s": 5, **kw}
    return APIBackend(model="m", base_url=url, **kw)


# ---- the request/response contract ---------------------------------------------------------------

def test_generate_sends_an_openai_request_and_returns_the_text():
    with serving(lambda body, h, n: ok(completion("  hello there \n"))) as s:
        b = backend(s.url)
        assert b.generate([CHAT], max_new_tokens=17, temperature=0.5, seed=3) == ["hello there"]
    req = s.requests[0]
    assert req["model"] == "m" and req["messages"] == CHAT
    assert req["max_tokens"] == 17 and req["temperature"] == 0.5 and req["seed"] == 3
    assert "Authorization" not in s.headers[0]  # no key variable: no auth header (local servers)


def test_next_token_logprobs_reads_top_logprobs_and_never_invents():
    top = [(" 1", -0.2), ("2", -1.9), ("1", -3.0), ("A", -4.0)]
    with serving(lambda body, h, n: ok(completion("1", top=top))) as s:
        b = backend(s.url, top_logprobs=5, extra_body={"cache_prompt": False})
        out = b.next_token_logprobs([CHAT, CHAT], ["1", "2", "3"])
    assert out == [[-0.2, -1.9, None]] * 2  # "3" is not among the returned tokens: None, not a number
    req = s.requests[0]
    assert req["max_tokens"] == 1 and req["temperature"] == 0
    assert req["logprobs"] is True and req["top_logprobs"] == 5
    assert req["cache_prompt"] is False  # extra_body is sent


def test_option_logprobs_prefers_the_best_ranked_match():
    top = [{"token": "1", "logprob": -0.5}, {"token": " 1", "logprob": -2.0}, {"token": "2", "logprob": float("-inf")}]
    assert option_logprobs(top, ["1", "2"]) == [-0.5, None]


def test_token_pieces_and_bytes_are_read_as_their_text():
    top = [{"token": "\u01201", "logprob": -0.3}, {"token": "\u25812", "logprob": -1.5},
           {"token": None, "bytes": [51], "logprob": -2.5}, {"token": " 4\n", "logprob": -3.0}]
    assert option_logprobs(top, ["1", "2", "3", "4", "5"]) == [-0.3, -1.5, -2.5, -3.0, None]


def test_a_two_way_answer_below_the_cutoff_gets_the_cutoff_as_its_bound():
    """A pairwise judge's "2" outside the top list (it ranks below all of them) is bounded by the
    smallest returned log-prob instead of dropping the verdict; with more options nothing is filled."""
    top = [("The", -1.6), ("1", -2.0), ("You", -2.7), ("Yes", -3.7)]
    with serving(lambda body, h, n: ok(completion("The", top=top))) as s:
        b = backend(s.url, top_logprobs=4)
        assert b.next_token_logprobs([CHAT], ["1", "2"]) == [[-2.0, -3.7]]
        assert b.last_bounded == [(0, "2")]
        assert b.next_token_logprobs([CHAT], ["2", "1"]) == [[-3.7, -2.0]]
        assert b.next_token_logprobs([CHAT], ["1", "2", "3"]) == [[-2.0, None, None]]
        assert b.last_bounded == []
        assert b.next_token_logprobs([CHAT], ["A", "B"]) == [[None, None]]  # neither: no answer at all


def test_results_come_back_in_input_order_with_bounded_concurrency():
    def respond(body, h, n):
        i = int(body["messages"][0]["content"])
        time.sleep(0.05 * ((i * 7) % 5))  # scramble completion order
        return ok(completion(f"echo {i}"))

    with serving(respond) as s:
        b = backend(s.url, max_concurrency=3)
        out = b.generate([[{"role": "user", "content": str(i)}] for i in range(15)])
    assert out == [f"echo {i}" for i in range(15)]
    assert s.max_in_flight <= 3
    assert s.max_in_flight >= 2  # requests really overlap
    assert b.accounting()["requests"] == 15


def test_rate_limit_spaces_requests():
    with serving(lambda body, h, n: ok()) as s:
        b = backend(s.url, max_concurrency=4, requests_per_minute=600)  # one start every 0.1 s
        assert b.generate([CHAT] * 6) == ["hello there"] * 6
    starts = sorted(b.client._limiter.starts)
    assert len(starts) == 6
    assert all(later - earlier >= 0.1 - 1e-9 for earlier, later in zip(starts, starts[1:], strict=False))


def test_accounting_counts_tokens_and_cost():
    with serving(lambda body, h, n: ok(completion(prompt_tokens=1000, completion_tokens=500))) as s:
        b = backend(s.url, price_per_1k_prompt=0.5, price_per_1k_completion=2.0)
        b.generate([CHAT] * 3)
    acc = b.accounting()
    assert acc == {"requests": 3, "failures": 0, "retries": 0, "prompt_tokens": 3000, "completion_tokens": 1500,
                   "cost_usd": pytest.approx(3 * (0.5 + 1.0))}


def test_contrastive_needs_a_local_model():
    b = backend("http://127.0.0.1:9/v1")
    with pytest.raises(BackendUnsupported, match="contrastive judge needs a local model"):
        b.sequence_logprobs([CHAT], ["x"])
    with pytest.raises(BackendUnsupported):
        b.next_token_logprobs([CHAT], ["1", "2"], assistant_prefix="Rating: ")


def test_make_backend_builds_the_api_backend():
    b = make_backend(model="m", api={"base_url": "http://127.0.0.1:9/v1", "api_key_env": None})
    assert isinstance(b, APIBackend)
    assert b.name == "m" and b.identity == "api:http://127.0.0.1:9/v1:m"


# ---- failures: counted, retried where it can help, None -- never a label -----------------------------

def test_server_error_is_retried_then_none(caplog):
    with serving(lambda body, h, n: ok({"error": "boom"}, status=500)) as s:
        b = backend(s.url, max_retries=3)
        with caplog.at_level(logging.WARNING, logger="rlaif"):
            assert b.generate([CHAT]) == [None]
            assert b.next_token_logprobs([CHAT], ["1", "2"]) == [[None, None]]
    assert len(s.requests) == 2 * (3 + 1)
    acc = b.accounting()
    assert (acc["requests"], acc["failures"], acc["retries"]) == (2, 2, 6)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "1 of 1" in warnings[0] and "http 500: 1" in warnings[0]


def test_429_with_retry_after_is_honoured_then_succeeds():
    def respond(body, h, n):
        return ok({"error": "slow down"}, status=429, headers={"Retry-After": "0"}) if n < 2 else ok()

    with serving(respond) as s:
        b = backend(s.url, max_retries=4, backoff_s=10.0)  # without Retry-After each wait would be 5-15 s
        assert b.generate([CHAT]) == ["hello there"]
    assert len(s.requests) == 3
    assert list(b.client.retry_waits) == [("http 429", 0.0), ("http 429", 0.0)]
    acc = b.accounting()
    assert (acc["requests"], acc["failures"], acc["retries"]) == (1, 0, 2)
    assert acc["completion_tokens"] == 3


def _after(value: str, status: int = 429):
    """A server that asks for a pause (``Retry-After: value``) once, then answers."""
    def respond(body, h, n):
        return ok({"error": "busy"}, status=status, headers={"Retry-After": value}) if n == 0 else ok()
    return respond


def test_retry_after_in_seconds_is_capped():
    with serving(_after("3600")) as s:
        b = backend(s.url, max_retries=2, backoff_s=10.0, max_retry_after_s=0.05)
        assert b.generate([CHAT]) == ["hello there"]
    assert list(b.client.retry_waits) == [("http 429", 0.05)]  # not an hour, and not the 5-15 s backoff


def test_retry_after_as_an_http_date():
    past = email.utils.formatdate(time.time() - 3600, usegmt=True)
    future = email.utils.formatdate(time.time() + 3600, usegmt=True)
    with serving(_after(past, status=503)) as s:
        b = backend(s.url, max_retries=2, backoff_s=10.0)
        assert b.generate([CHAT]) == ["hello there"]
    assert list(b.client.retry_waits) == [("http 503", 0.0)]  # a date already passed: retry at once
    with serving(_after(future, status=503)) as s:
        b = backend(s.url, max_retries=2, backoff_s=10.0, max_retry_after_s=0.2)
        assert b.generate([CHAT]) == ["hello there"]
    assert list(b.client.retry_waits) == [("http 503", 0.2)]
    # the date is read, not the cap: 100 s ahead is a pause of (almost) 100 s
    soon = httpx.Response(503, headers={"Retry-After": email.utils.formatdate(time.time() + 100, usegmt=True)})
    assert 90 < ChatClient._retry_after(soon) <= 100
    assert ChatClient._retry_after(httpx.Response(503, headers={"Retry-After": "soon"})) is None


def test_backoff_doubles_with_jitter_when_the_server_names_no_pause():
    with serving(lambda body, h, n: ok({"error": "down"}, status=503)) as s:
        b = backend(s.url, max_retries=3, backoff_s=0.01)
        assert b.generate([CHAT]) == [None]
    waits = list(b.client.retry_waits)
    assert [reason for reason, _ in waits] == ["http 503"] * 3 and len(s.requests) == 4
    for attempt, (_, w) in enumerate(waits):  # backoff_s * 2**attempt, times a jitter in [0.5, 1.5]
        assert 0.5 * 0.01 * 2 ** attempt <= w <= 1.5 * 0.01 * 2 ** attempt


def test_bad_retry_settings_are_refused():
    with pytest.raises(ValueError, match=r"judge\.api\.max_retry_after_s: -1 must be >= 0"):
        backend("http://127.0.0.1:9/v1", max_retry_after_s=-1)
    for bad, says in ((-0.1, "must be >= 0"), (1.5, "must be <= 1"), ("half", "expected a number"),
                      (True, "expected a number")):
        with pytest.raises(ValueError, match=rf"judge\.api\.max_failed_share: .*{says}"):
            backend("http://127.0.0.1:9/v1", max_failed_share=bad)


def test_other_4xx_is_not_retried():
    with serving(lambda body, h, n: ok({"error": "bad model"}, status=404)) as s:
        b = backend(s.url, max_retries=4)
        assert b.generate([CHAT]) == [None]
    assert len(s.requests) == 1
    assert b.accounting()["retries"] == 0 and b.accounting()["failures"] == 1
    assert b.client.failure_reasons == {"http 404": 1}


@pytest.mark.parametrize("payload", [b"<html>502 Bad Gateway</html>", b"[1, 2]", b'{"choices": []}',
                                     b'{"choices": [{"message": {"content": null}}]}'],
                         ids=["not-json", "not-object", "no-choices", "null-content"])
def test_unusable_response_is_a_counted_failure(payload):
    with serving(lambda body, h, n: (200, {"Content-Type": "application/json"}, payload)) as s:
        b = backend(s.url)
        assert b.generate([CHAT]) == [None]
        assert b.next_token_logprobs([CHAT], ["1", "2"]) == [[None, None]]
    assert b.accounting()["failures"] == 2
    assert b.client.failure_reasons.keys() <= {"invalid json", "malformed response"}


def test_missing_logprobs_is_a_failure_not_a_value():
    with serving(lambda body, h, n: ok(completion("1", top=None))) as s:  # server ignored logprobs=true
        b = backend(s.url)
        assert b.next_token_logprobs([CHAT], ["1", "2"]) == [[None, None]]
    assert b.accounting()["failures"] == 1
    assert "logprobs" in b.client.recent_errors[-1]


def test_timeout_is_retried_then_none():
    def respond(body, h, n):
        time.sleep(1.5)
        return ok()

    with serving(respond) as s:
        b = backend(s.url, timeout_s=0.3, max_retries=1)
        assert b.generate([CHAT]) == [None]
        assert len(s.requests) == 2
    assert b.accounting()["failures"] == 1 and b.accounting()["retries"] == 1
    assert b.client.failure_reasons["timeout"] == 1
    assert [reason for reason, _ in b.client.retry_waits] == ["timeout"]


def test_connection_refused_is_none():
    b = backend(f"http://127.0.0.1:{free_port()}/v1", max_retries=2)
    assert b.generate([CHAT, CHAT]) == [None, None]
    acc = b.accounting()
    assert (acc["requests"], acc["failures"], acc["retries"]) == (2, 2, 4)
    assert b.client.failure_reasons["connection error"] == 2


# ---- the API key ------------------------------------------------------------------------------------

def test_api_key_is_sent_and_never_shown(monkeypatch, caplog):
    monkeypatch.setenv("RLAIF_TEST_KEY", KEY)

    def respond(body, h, n):
        if body["messages"][0]["content"] == "fail":  # an error page that echoes the request headers
            return ok({"error": f"denied, you sent {h.get('Authorization')}"}, status=500)
        return ok()

    with serving(respond) as s:
        b = APIBackend(model="m", base_url=s.url, api_key_env="RLAIF_TEST_KEY", max_retries=1, backoff_s=0.01)
        with caplog.at_level(logging.DEBUG):
            assert b.generate([CHAT]) == ["hello there"]
            assert b.generate([[{"role": "user", "content": "fail"}]]) == [None]
    assert all(h.get("Authorization") == f"Bearer {KEY}" for h in s.headers)
    assert len(s.headers) == 3
    shown = [repr(b), str(b), b.identity, b.name, json.dumps(b.accounting()), repr(b.client),
             *b.client.recent_errors, *(r.getMessage() for r in caplog.records)]
    assert any("denied" in x for x in shown)  # the error text itself was recorded ...
    assert not [x for x in shown if KEY in x]  # ... with the key scrubbed
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_api_key_is_read_at_request_time(monkeypatch):
    monkeypatch.delenv("RLAIF_TEST_KEY", raising=False)
    with serving(lambda body, h, n: ok()) as s:
        b = APIBackend(model="m", base_url=s.url, api_key_env="RLAIF_TEST_KEY")
        b.generate([CHAT])
        monkeypatch.setenv("RLAIF_TEST_KEY", KEY)
        b.generate([CHAT])
    assert "Authorization" not in s.headers[0]
    assert s.headers[1]["Authorization"] == f"Bearer {KEY}"


def test_credentials_in_base_url_are_basic_auth_and_shown_nowhere(caplog):
    password = "pw-5f3a9c1e-url"

    def respond(body, h, n):
        if body["messages"][0]["content"] == "fail":  # an error page that echoes what it was sent
            return ok({"error": f"denied for {base64.b64decode(h['Authorization'].split()[1]).decode()}"},
                      status=500)
        return ok()

    with serving(respond) as s:
        url = s.url.replace("http://", f"http://rlaif:{password}@")
        b = APIBackend(model="m", base_url=url, api_key_env=None, max_retries=1, backoff_s=0.01)
        g = APIGenerator(model="m", base_url=url, api_key_env=None, num_candidates=2, max_retries=0)
        with caplog.at_level(logging.DEBUG):  # httpx logs every request URL at INFO
            assert b.generate([CHAT]) == ["hello there"]
            assert b.generate([[{"role": "user", "content": "fail"}]]) == [None]
            cands = g.sample(None, prompts(1))
    expected = "Basic " + base64.b64encode(f"rlaif:{password}".encode()).decode()
    assert [h.get("Authorization") for h in s.headers] == [expected] * 5
    assert b.identity == f"api:{s.url}:m" and g.identity() == f"api:{s.url}:m"
    assert {c.model for c in cands} == {f"api:{s.url}:m"}
    shown = [repr(b), repr(g), b.identity, g.identity(), repr(b.client), b.client.base_url,
             *b.client.recent_errors, *(r.getMessage() for r in caplog.records)]
    assert any("denied for ***" in x for x in shown)  # the echo was recorded ...
    assert not [x for x in shown if password in x]  # ... without the password
    assert any("127.0.0.1" in r.getMessage() for r in caplog.records if r.name.startswith("httpx"))


def test_an_api_key_wins_over_credentials_in_the_url(monkeypatch):
    monkeypatch.setenv("RLAIF_TEST_KEY", KEY)
    with serving(lambda body, h, n: ok()) as s:
        b = APIBackend(model="m", base_url=s.url.replace("http://", "http://u:p4ssw0rd@"),
                       api_key_env="RLAIF_TEST_KEY")
        b.generate([CHAT])
    assert s.headers[0]["Authorization"] == f"Bearer {KEY}"


# ---- the generator ----------------------------------------------------------------------------------

def prompts(n: int) -> list[Prompt]:
    return [Prompt(f"p{i}", f"text {i}", [{"role": "user", "content": f"Continue: review {i}"}], "train")
            for i in range(n)]


def test_generator_drops_failed_requests_and_seeds_each_candidate():
    def respond(body, h, n):
        if body["seed"] % 1000 == 1:  # candidate 1 of every prompt fails for good
            return ok({"error": "bad"}, status=400)
        return ok(completion(f"c{body['seed']}", completion_tokens=5, finish_reason="length"))

    with serving(respond) as s:
        g = APIGenerator(model="m", base_url=s.url, api_key_env=None, num_candidates=3, max_new_tokens=9,
                         temperature=0.8, top_p=0.9, max_retries=0)
        out = g.sample(None, prompts(2), seed=7)
    assert [(c.prompt_id, c.index, c.text) for c in out] == [
        ("p0", 0, "c7000"), ("p0", 2, "c7002"), ("p1", 0, "c7000"), ("p1", 2, "c7002")]
    assert g.failures == 2
    assert all(c.text and c.num_tokens == 5 and c.finished is False and c.source == "policy" for c in out)
    assert all(c.model == g.identity() == f"api:{s.url}:m" for c in out)
    req = s.requests[0]
    assert (req["max_tokens"], req["temperature"], req["top_p"]) == (9, 0.8, 0.9) and "top_k" not in req
    assert g.accounting()["failures"] == 2 and g.accounting()["requests"] == 6
    assert g.sampling_params() == {"max_new_tokens": 9, "temperature": 0.8, "top_p": 0.9, "top_k": 0}


def test_generator_config_composes_validates_and_instantiates():
    from conftest import compose_config
    from hydra.utils import instantiate

    from rlaif.config import validate

    cfg = compose_config(["generator=api", "generator.extra_body={min_p: 0.1}"])
    validate(cfg)
    g = instantiate(cfg.generator)
    assert isinstance(g, APIGenerator)
    assert g.model_name == cfg.policy.model and g.num_candidates == cfg.generator.num_candidates
    assert g.client.base_url.endswith("/v1")
    assert g._body(prompts(1)[0], 0)["min_p"] == 0.1
    json.dumps(g._body(prompts(1)[0], 0))  # config nodes became plain JSON


# ---- against a real llama.cpp server ------------------------------------------------------------

QUESTION = [{"role": "user", "content": "Is the sky blue on a clear day? Answer 1 for yes or 2 for no. "
                                        "Reply with the digit only."}]


@pytest.mark.integration
def test_real_server_next_token_logprobs(llama_server):  # noqa: F811
    b = APIBackend(model=MODEL_ID, base_url=llama_server, api_key_env=None)
    [[lp1, lp2]] = b.next_token_logprobs([QUESTION], ["1", "2"])
    assert lp1 is not None and lp2 is not None
    assert math.isfinite(lp1) and math.isfinite(lp2) and lp1 <= 0 and lp2 <= 0
    assert math.exp(lp1) + math.exp(lp2) <= 1 + 1e-6
    acc = b.accounting()
    assert acc["requests"] == 1 and acc["failures"] == 0
    assert acc["prompt_tokens"] > 10 and acc["completion_tokens"] == 1


@pytest.mark.integration
def test_real_server_generate(llama_server):  # noqa: F811
    b = APIBackend(model=MODEL_ID, base_url=llama_server, api_key_env=None)
    out = b.generate([CHAT, [{"role": "user", "content": "Name a colour."}]], max_new_tokens=12)
    assert all(isinstance(t, str) and t for t in out)
    acc = b.accounting()
    assert acc["requests"] == 2 and acc["failures"] == 0 and 2 <= acc["completion_tokens"] <= 24


@pytest.mark.integration
def test_real_server_pairwise_judge(llama_server):  # noqa: F811
    crit = Criterion("positive", "positive review", {"pairwise": {"question": "Which review is more positive?"}})
    judge = PairwiseJudge(crit, api={"base_url": llama_server, "api_key_env": None}, model=MODEL_ID)
    assert isinstance(judge.backend, APIBackend)
    p = prompts(2)
    out = judge.compare(p, ["A wonderful, moving film.", "Great fun."], ["A dull, awful mess.", "Boring."])
    assert len(out) == 2
    for first, second in out:
        assert first is not None and second is not None
        assert 0.0 <= first <= 1.0 and 0.0 <= second <= 1.0
    assert judge.backend.accounting()["requests"] == 4  # both orders of both pairs


@pytest.mark.integration
def test_real_server_pairwise_verdict_when_one_answer_is_below_the_cutoff(llama_server):  # noqa: F811
    """The small model ranks "2" near the 20th token of this chat (in or out of the top 20 by
    rounding differences between CPUs); with the top 5 it is surely out, and the verdict must
    still come back, from "1"'s log-prob and the cut-off."""
    from omegaconf import OmegaConf

    from rlaif.config import conf_dir

    crit = Criterion.from_config(OmegaConf.load(conf_dir() / "criteria" / "positive_sentiment.yaml"))
    judge = PairwiseJudge(crit, api={"base_url": llama_server, "api_key_env": None, "top_logprobs": 5},
                          model=MODEL_ID)
    task = "Continue this movie review: The film"
    p = Prompt("0", task, [{"role": "user", "content": task}], "audit")
    [(first, second)] = judge.compare([p], ["is a joy."], ["is a bore."])
    assert judge.backend.last_bounded and {o for _, o in judge.backend.last_bounded} == {"2"}
    assert first is not None and second is not None and 0.5 < first < 1.0 and 0.0 < second < 0.5
    assert judge.backend.accounting()["failures"] == 0


@pytest.mark.integration
def test_real_server_generator(llama_server):  # noqa: F811
    g = APIGenerator(model=MODEL_ID, base_url=llama_server, api_key_env=None, num_candidates=2,
                     max_new_tokens=10, max_concurrency=2)
    out = g.sample(None, prompts(2), k=3, seed=1)
    assert g.failures == 0
    assert sorted((c.prompt_id, c.index) for c in out) == [(f"p{i}", j) for i in range(2) for j in range(3)]
    assert all(1 <= c.num_tokens <= 10 for c in out)
    acc = g.accounting()
    assert acc["requests"] == 6 and acc["completion_tokens"] == sum(c.num_tokens for c in out)


@pytest.mark.integration
def test_resumed_judging_reports_what_every_attempt_spent(llama_server, tmp_path):  # noqa: F811
    """A rerun reads finished groups back from the journal instead of asking the server again, and the
    spend of those groups (recorded when they were judged) is added to its own: the resumed run
    reports the requests and tokens an uninterrupted run reports."""
    from rlaif.journal import Journal, add_spent
    from rlaif.judges.base import rank_in_chunks
    from rlaif.types import Candidate

    crit = Criterion("positive", "positive review", {"pairwise": {"question": "Which review is more positive?"}})

    def judge():
        return PairwiseJudge(crit, api={"base_url": llama_server, "api_key_env": None}, model=MODEL_ID)

    ps = prompts(2)
    texts = ["A wonderful film.", "A dull mess.", "Fine, I suppose."]
    cands = [Candidate(p.id, i, t, 3, True, "m") for p in ps for i, t in enumerate(texts)]

    whole = judge()
    expected = rank_in_chunks(whole, ps, cands, 1, None)
    # the first attempt judged the first prompt's group, then died
    first = judge()
    rank_in_chunks(first, ps[:1], cands[:3], 1, Journal(tmp_path / "judgments.jsonl"))
    assert first.backend.accounting()["requests"] == 6  # 3 pairs, both orders
    # the rerun asks the server only about the second prompt
    second, journal = judge(), Journal(tmp_path / "judgments.jsonl")
    got = rank_in_chunks(second, ps, cands, 1, journal)
    assert [j.to_dict() for j in got[0]] == [j.to_dict() for j in expected[0]]
    assert second.backend.accounting()["requests"] == 6 and journal.reused == 3
    total = add_spent(second.backend.accounting(), [journal])
    for key in ("requests", "failures", "prompt_tokens", "completion_tokens"):
        assert total[key] == whole.backend.accounting()[key], key
    assert total["prompt_tokens"] > 0
