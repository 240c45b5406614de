"""A whole run whose judge is served by a real OpenAI-compatible server (llama.cpp on 127.0.0.1),
with an API key in the environment that must not reach any file the run writes."""

from __future__ import annotations

import json
import re

import pytest
from conftest import compose_config
from llama_server import MODEL_ID, llama_server  # noqa: F401

from rlaif.pipeline import run

pytestmark = pytest.mark.integration

SECRET = "sk-rlaif-test-0123456789abcdefghijklmnop"


def test_pipeline_with_api_pairwise_judge_keeps_key_out_of_outputs(tiny_overrides, tmp_path, monkeypatch,
                                                                   llama_server):  # noqa: F811
    monkeypatch.setenv("RLAIF_TEST_API_KEY", SECRET)
    api = f'{{base_url: "{llama_server}", api_key_env: RLAIF_TEST_API_KEY, max_concurrency: 1}}'
    cfg = compose_config(tiny_overrides + ["judge=pairwise", f"judge.model={MODEL_ID}", f"judge.api={api}",
                                           "data.num_train=3", "diagnostics.probe_items=2"])
    out = tmp_path / "api-run"
    summary = run(cfg, output_dir=out)

    verdicts = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == 3 * 3  # 3 prompts x C(3 candidates, 2)
    valid = [v for v in verdicts if v["p_a_first"] is not None and v["p_a_second"] is not None]
    assert valid, "the server gave no usable log-probabilities"
    assert all(0.0 <= v["p_a_first"] <= 1.0 for v in valid)
    assert verdicts[0]["judge"] == f"pairwise:{MODEL_ID}"
    assert summary["judge/api_requests"] >= 2 * len(verdicts)  # both orders of every pair
    assert summary["judge/api_failures"] == 0

    # The key never reaches the run folder: records, configs, logs, diagnostics or W&B files.
    leaked = [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []
    resolved = (out / "resolved_config.yaml").read_text()
    assert "RLAIF_TEST_API_KEY" in resolved  # the variable's name is kept, its value is not


def test_audit_with_api_judge_keeps_key_out_of_files(tmp_path, monkeypatch, llama_server):  # noqa: F811
    from test_audit import compose_audit

    from rlaif.audit import run_audit

    monkeypatch.setenv("RLAIF_TEST_API_KEY", SECRET)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Continue this movie review: The film", "chosen": "is a joy.",
                                 "rejected": "is a bore.", "criterion": "positive_sentiment"}) + "\n")
    api = f'{{base_url: "{llama_server}", api_key_env: RLAIF_TEST_API_KEY, max_concurrency: 1}}'
    # the composed judge group (with its overrides) serves the audit entry of the same kind
    cfg = compose_audit([f"audit.data.path={pairs}", "audit.judges=[pairwise]", "audit.probe_items=1",
                         "judge=pairwise", f"judge.api={api}", f"judge.model={MODEL_ID}"])
    report = run_audit(cfg, tmp_path / "audit")
    m = report["judges"]["pairwise"]["all"]
    assert m["invalid"] == 0 and "same_slot_rate" in m
    leaked = [p for p in (tmp_path / "audit").rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []


def test_pipeline_with_api_generator(tiny_overrides, tmp_path, llama_server):  # noqa: F811
    """Candidates sampled from the server; the local tiny policy is trained on them and evaluated."""
    cfg = compose_config(tiny_overrides + ["generator=api", f"generator.base_url={llama_server}",
                                           f"generator.model={MODEL_ID}", "generator.max_new_tokens=8",
                                           "generator.num_candidates=2", "generator.max_concurrency=1",
                                           "data.num_train=3", "tracker=none", "diagnostics.probe_items=0"])
    summary = run(cfg, output_dir=tmp_path / "api-gen")
    cands = [json.loads(x) for x in (tmp_path / "api-gen" / "candidates.jsonl").read_text().splitlines()]
    assert len(cands) == 3 * 2
    assert all(c["model"].startswith("api:") and c["num_tokens"] > 0 for c in cands)
    assert summary["generate/api_requests"] == 6 and summary["generate/api_failures"] == 0
    assert summary["eval/samples_per_policy"] == 3 * 2  # evaluation samples the local trained policy


# ---- a server that dies in the middle of a run -----------------------------------------------------

class Wire:
    """Records every request body the API clients put on the wire and whether it was answered;
    after the ``stop_after``-th answer it stops the real server (the next requests are refused)."""

    def __init__(self, monkeypatch, server=None, stop_after: int | None = None):
        from rlaif.backends.api import ChatClient

        self.answered: list[str] = []
        self.failed: list[str] = []
        post = ChatClient._post_json

        def watched(client, path, body):
            key = json.dumps(body, sort_keys=True)
            try:
                data = post(client, path, body)
            except Exception:
                self.failed.append(key)
                raise
            self.answered.append(key)
            if stop_after is not None and len(self.answered) == stop_after:
                server.stop()
            return data

        monkeypatch.setattr(ChatClient, "_post_json", watched)

    @property
    def sent(self) -> list[str]:
        return self.answered + self.failed


def _records(out, *names):
    return {n: [json.loads(x) for x in (out / f"{n}.jsonl").read_text().splitlines()] for n in names}


@pytest.fixture
def restartable_server(tmp_path):
    from llama_server import LlamaServer, require_server

    require_server()
    server = LlamaServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def test_a_judge_server_that_dies_mid_run_stops_it_and_the_rerun_asks_only_what_failed(
        tiny_overrides, tmp_path, monkeypatch, restartable_server):
    from rlaif.backends.api import RequestsFailed

    server = restartable_server
    url = server.base_url.replace("http://", "http://rlaif:pw-in-url-7c1d@")  # credentials must not show
    api = f'{{base_url: "{url}", api_key_env: null, max_concurrency: 1, max_retries: 1, backoff_s: 0.01}}'

    def cfg(name):
        return compose_config(tiny_overrides + [f"cache.dir={tmp_path / name}", "judge=pairwise",
                                                f"judge.model={MODEL_ID}", f"judge.api={api}", "data.num_train=3",
                                                "journal.chunk_prompts=1", "diagnostics.probe_items=0",
                                                "tracker=none"])

    with monkeypatch.context() as mp:
        wire0 = Wire(mp)
        whole = run(cfg("cache-whole"), output_dir=tmp_path / "whole")  # the uninterrupted run
    expected = _records(tmp_path / "whole", "judgments", "verdicts")

    with monkeypatch.context() as mp:
        wire = Wire(mp, server, stop_after=4)  # the server dies after 4 of the first prompt's 6 answers
        with pytest.raises(RequestsFailed) as e:
            run(cfg("cache-cut"), output_dir=tmp_path / "cut")
    msg = str(e.value)
    failed = len(set(wire.failed))
    assert failed > 0 and " failed after up to 1 retries" in msg
    assert re.search(rf"\b{failed} of {failed + 4} judge requests to {re.escape(server.base_url)} failed", msg), msg
    assert "judge.api.max_failed_share=0" in msg and "pw-in-url" not in msg
    assert not (tmp_path / "cut" / "policy").exists()  # nothing was trained on what was left

    server.start()
    with monkeypatch.context() as mp:
        wire2 = Wire(mp)
        again = run(cfg("cache-cut"), output_dir=tmp_path / "cut")
    assert wire2.sent and not wire2.failed
    assert not set(wire2.sent) & set(wire.answered)  # an answered request is never sent again ...
    # ... and the rest is what the uninterrupted run asked (the failed judge requests, then evaluation)
    assert set(wire2.sent) == set(wire0.sent) - set(wire.answered)
    got = _records(tmp_path / "cut", "judgments", "verdicts")
    assert got == expected
    assert again["judge/api_requests"] == whole["judge/api_requests"]  # every attempt's spend, counted once
    assert again["judge/api_failures"] == 0 and again["judge/invalid"] == whole["judge/invalid"]
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and b"pw-in-url-7c1d" in p.read_bytes()]
    assert leaked == []


def test_a_generation_server_that_dies_mid_run_and_comes_back(tiny_overrides, tmp_path, monkeypatch,
                                                              restartable_server):
    from rlaif.backends.api import RequestsFailed

    server = restartable_server

    def cfg(name, share=0.0):
        return compose_config(tiny_overrides + [
            f"cache.dir={tmp_path / name}", "generator=api", f"generator.base_url={server.base_url}",
            f"generator.model={MODEL_ID}", "generator.api_key_env=null", "generator.max_new_tokens=6",
            "generator.num_candidates=2", "generator.max_concurrency=1", "generator.max_retries=1",
            "generator.backoff_s=0.01", f"generator.max_failed_share={share}", "data.num_train=3",
            "journal.chunk_prompts=1", "tracker=none", "diagnostics.probe_items=0"])

    run(cfg("cache-whole"), output_dir=tmp_path / "whole")
    expected = _records(tmp_path / "whole", "candidates")["candidates"]

    with monkeypatch.context() as mp:
        wire = Wire(mp, server, stop_after=3)  # dies inside the second prompt's pair of samples
        with pytest.raises(RequestsFailed, match=rf"3 of 6 generation requests to {re.escape(server.base_url)}"):
            run(cfg("cache-cut"), output_dir=tmp_path / "cut")
    assert len(set(wire.failed)) == 3

    server.start()
    with monkeypatch.context() as mp:
        wire2 = Wire(mp)
        run(cfg("cache-cut"), output_dir=tmp_path / "cut")
    assert sorted(wire2.sent) == sorted(set(wire.failed))  # exactly the failed requests, each once
    assert _records(tmp_path / "cut", "candidates")["candidates"] == expected


def test_a_dead_generation_server_stops_the_run_and_a_bad_share_is_refused(tiny_overrides, tmp_path):
    from llama_server import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    overrides = tiny_overrides + ["generator=api", f"generator.base_url={dead}", "generator.model=m",
                                  "generator.api_key_env=null", "generator.max_retries=0", "data.num_train=3",
                                  "tracker=none", "diagnostics.probe_items=0"]
    from rlaif.backends.api import RequestsFailed

    with pytest.raises(RequestsFailed, match=r"9 of 9 generation requests to http://127\.0\.0\.1:\d+/v1 failed"):
        run(compose_config(overrides), output_dir=tmp_path / "dead")
    from rlaif.config import ConfigError

    with pytest.raises(ConfigError, match=r"generator\.max_failed_share: 2 must be <= 1"):
        run(compose_config(overrides + ["generator.max_failed_share=2"]), output_dir=tmp_path / "bad")
    api = '{base_url: "http://127.0.0.1:9/v1", max_failed_share: half}'
    with pytest.raises(ConfigError, match=r"judge\.api\.max_failed_share: expected a number, got 'half'"):
        run(compose_config(overrides + ["judge=pairwise", f"judge.api={api}"]), output_dir=tmp_path / "bad")


def _stage_of_each_request(mp, out) -> dict[str, set[str]]:
    """The stages (progress.json of run folder ``out``) each request body was sent in."""
    from rlaif.backends.api import ChatClient

    stages: dict[str, set[str]] = {}
    post = ChatClient._post_json

    def staged(client, path, body):
        stage = json.loads((out / "progress.json").read_text())["stage"]
        stages.setdefault(json.dumps(body, sort_keys=True), set()).add(stage)
        return post(client, path, body)

    mp.setattr(ChatClient, "_post_json", staged)
    return stages


def test_a_judge_server_that_dies_in_probes_and_in_evaluation_stops_each_and_the_reruns_ask_only_what_failed(
        tiny_overrides, tmp_path, monkeypatch, restartable_server):
    from rlaif.backends.api import RequestsFailed

    server = restartable_server
    api = f'{{base_url: "{server.base_url}", api_key_env: null, max_concurrency: 1, max_retries: 1, backoff_s: 0.01}}'

    def cfg(name):
        return compose_config(tiny_overrides + [
            f"cache.dir={tmp_path / name}", "judge=pairwise", f"judge.model={MODEL_ID}", f"judge.api={api}",
            "data.num_train=2", "generator.num_candidates=2", "journal.chunk_prompts=1", "diagnostics.probe_items=1", "tracker=none"])

    def run_watched(name, stop_after=None):
        out = tmp_path / name
        with monkeypatch.context() as mp:
            wire = Wire(mp, server, stop_after)
            stages = _stage_of_each_request(mp, out)
            try:
                return wire, stages, run(cfg(f"cache-{name}"), output_dir=out), None
            except RequestsFailed as e:
                return wire, stages, None, str(e)

    wire0, stages0, whole, _ = run_watched("whole")
    asked = {s: {k for k in wire0.answered if s in stages0[k]} for s in ("judge", "diagnostics", "evaluate")}
    assert len(asked["diagnostics"]) > 2 and len(asked["evaluate"]) > 2, asked.keys()
    expected = _records(tmp_path / "whole", "diagnostics", "eval_samples", "eval_metrics")

    # 1. The server dies after two answers of the probes: the run stops before diagnostics are cached.
    wire1, _, _, msg = run_watched("cut", stop_after=len(asked["judge"]) + 2)
    assert msg is not None, "a probe whose requests failed was kept as finished"

    def failed_of(msg):  # (failed, answered) judge requests of the stage that stopped
        m = re.search(rf"\b(\d+) of (\d+) judge requests to {re.escape(server.base_url)} failed", msg)
        assert m and "judge.api.max_failed_share=0" in msg, msg
        return int(m[1]), int(m[2]) - int(m[1])

    assert wire1.failed and failed_of(msg)[1] == 2
    assert not (tmp_path / "cut" / "diagnostics.json").exists()
    # what the uninterrupted run's probes asked and got no answer here (one client: answers come in order)
    unanswered = asked["diagnostics"] - set(wire1.answered[len(asked["judge"]):])

    # 2. Back up: the rerun sends exactly the probes' unanswered requests; the server dies in evaluation.
    server.start()
    wire2, stages2, _, msg = run_watched("cut", stop_after=len(unanswered) + 2)
    assert msg is not None, "evaluation verdicts of failed requests were cached as finished"
    assert {k for k in wire2.sent if "diagnostics" in stages2[k]} == unanswered
    assert not {k for k in wire2.sent if "judge" in stages2[k]}  # labelling had finished
    assert wire2.failed and failed_of(msg)[1] == 2
    assert not (tmp_path / "cut" / "eval_metrics.jsonl").exists()

    # 3. Back up again: only evaluation's unanswered requests are sent, and the run ends as the whole one did.
    server.start()
    wire3, _, again, _ = run_watched("cut")
    assert again is not None and not wire3.failed
    assert sorted(wire3.sent) == sorted(asked["evaluate"] - set(wire2.answered[-2:]))  # each once
    assert _records(tmp_path / "cut", "diagnostics", "eval_samples", "eval_metrics") == expected
    assert again["eval/win_rate_invalid"] == 0 and again["eval/win_rate"] == whole["eval/win_rate"]
