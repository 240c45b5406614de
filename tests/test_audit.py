"""rlaif-audit on the tiny model: audit.json keys, the bundled labelled pairs, bad input."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from rlaif.audit import load_labelled_pairs, run_audit
from rlaif.config import ConfigError, conf_dir
from rlaif.data import PromptFileError


def compose_audit(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("audit", overrides=overrides)


def test_bundled_pairs_are_balanced_by_length_and_cover_criteria():
    rows = load_labelled_pairs({"path": "builtin:audit/pairs.jsonl"})
    assert len(rows) >= 100
    assert {"helpfulness", "harmlessness", "honesty", "positive_sentiment"} <= {r["criterion"] for r in rows}
    kinds = Counter()
    for r in rows:  # recompute from the texts rather than trusting the label
        c, w = len(r["chosen"].split()), len(r["rejected"].split())
        kinds["longer" if c >= 1.5 * w else "shorter" if w >= 1.5 * c else "similar"] += 1
    assert all(abs(kinds[k] - len(rows) / 3) <= 2 for k in ("longer", "shorter", "similar")), kinds


def test_audit_writes_every_metric_per_judge_and_criterion(tiny_model, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    rows = load_labelled_pairs({"path": "builtin:audit/pairs.jsonl"})
    pick = [r for r in rows if r["criterion"] == "positive_sentiment"][:6] + \
           [r for r in rows if r["criterion"] == "honesty"][:4]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in pick))
    cfg = compose_audit([f"policy.model={tiny_model}", f"audit.data.path={pairs}", "audit.probe_items=2",
                         "audit.judges=[contrastive,pairwise,rule]", "judge.dtype=float32",
                         f"cache.dir={tmp_path / 'cache'}"])
    report = run_audit(cfg, tmp_path / "audit")
    saved = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert saved["n_pairs"] == 10 == report["n_pairs"]
    pw = saved["judges"]["pairwise"]
    assert set(pw["by_criterion"]) == {"positive_sentiment", "honesty"}
    for key in ["accuracy_averaged", "accuracy_with_ties", "position_consistency", "same_slot_rate",
                "p_prefer_longer", "probe_swap_max_mismatch"]:
        assert key in pw["by_criterion"]["positive_sentiment"], key
    assert pw["all"]["n_pairs"] == 10
    assert pw["by_criterion"]["positive_sentiment"]["probe_swap_max_mismatch"] < 1e-6
    # VADER is near-perfect on the sentiment pairs: the audit must see that (a metric that can fail)
    assert saved["judges"]["rule"]["by_criterion"]["positive_sentiment"]["accuracy_averaged"] >= 5 / 6
    assert "position_consistency" not in saved["judges"]["contrastive"]["all"]  # pointwise: no slots
    out = capsys.readouterr().out
    assert "== judge 'pairwise'" in out and "same-slot" in out and "ALL" in out


def test_audit_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="Valid choices"):
        run_audit(compose_audit(["audit.judges=[nope]"]), tmp_path / "a")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "c"}\n')
    with pytest.raises(PromptFileError, match="rejected"):
        load_labelled_pairs({"path": str(bad)})
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(PromptFileError, match="empty"):
        load_labelled_pairs({"path": str(empty)})
