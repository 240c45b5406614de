"""A whole run whose judge is served by a real OpenAI-compatible server (llama.cpp on 127.0.0.1),
with an API key in the environment that must not reach any file the run writes."""

from __future__ import annotations

import json

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
