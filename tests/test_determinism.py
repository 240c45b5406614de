"""Same config and seed on the same machine: byte-identical records and identical metrics.

Nothing is reused (``cache.enabled=false``): each run samples, judges and trains from scratch, in
its own folder. Two runs share a process, as the jobs of a basic-launcher sweep do (state leaking
from one run into the next shows here); a third is a separate ``rlaif`` process with another
PYTHONHASHSEED (set or dict ordering that depends on string hashes shows there). Wall-clock values
(``time/*``) and cache counters (``cache/*``) are the only summary keys allowed to differ.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_config

from rlaif.pipeline import run

RECORDS = ["prompts", "candidates", "judgments", "verdicts", "preferences", "eval_samples"]
CLOCK = ("_runtime", "_per_second")  # the trainer's wall-clock figures in train_history.jsonl rows


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("determinism")
    overrides = [
        f"policy.model={tiny_model}", "cache.enabled=false", f"cache.dir={root / 'cache'}", "tracker=none",
        "data.num_train=6", "data.num_eval=3", "generator.num_candidates=3", "generator.max_new_tokens=8",
        "generator.dtype=float32", "judge.dtype=float32", "optimizer.epochs=1", "optimizer.batch_size=4",
        "optimizer.learning_rate=1e-3", "optimizer.mixed_precision=no", "evaluation.samples_per_prompt=2",
    ]
    out = {"first": root / "a" / "run", "second": root / "b" / "run", "process": root / "c" / "run"}
    for name in ("first", "second"):
        run(compose_config(overrides), output_dir=out[name])
    other_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    out["process"].parent.mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "rlaif", *overrides, f"hydra.run.dir={out['process']}"],
                          cwd=out["process"].parent, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONHASHSEED": other_seed})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def assert_same_run(a: Path, b: Path) -> None:
    for name in RECORDS:
        assert (a / f"{name}.jsonl").read_bytes() == (b / f"{name}.jsonl").read_bytes(), f"{name}.jsonl differs"
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    keep = lambda s: {k: v for k, v in s.items() if not k.startswith(("time/", "cache/"))}  # noqa: E731
    differ = {k: (keep(sa).get(k), keep(sb).get(k)) for k in keep(sa).keys() | keep(sb).keys()
              if keep(sa).get(k) != keep(sb).get(k)}
    assert not differ, f"summary.json differs outside time/* and cache/*: {differ}"
    assert json.loads((a / "diagnostics.json").read_text()) == json.loads((b / "diagnostics.json").read_text())
    ha, hb = ([{k: v for k, v in json.loads(line).items() if not k.endswith(CLOCK)}
               for line in (d / "train_history.jsonl").read_text().splitlines()] for d in (a, b))
    assert ha == hb, "the training curves differ"


def test_two_runs_in_one_process_are_identical(runs):
    assert_same_run(runs["first"], runs["second"])


def test_a_separate_process_with_another_hash_seed_is_identical(runs):
    assert_same_run(runs["first"], runs["process"])
