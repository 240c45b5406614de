"""Progress output of real tiny runs: every long stage shows a named bar with its total on stderr,
and training prints one compact line per logging step instead of the Trainer's raw dicts."""

from __future__ import annotations

import re

import pytest
from conftest import compose_config

from rlaif.pipeline import run

RAW_DICT = re.compile(r"\{'(loss|train_runtime|grad_norm)'")
STEP_LINE = re.compile(r"(?:^|[\r\n])step (\d+)/(\d+)  loss \S+[^\r\n]*  lr \S+")  # tqdm.write clears the bar with \r


def _totals(text: str, desc: str) -> set[str]:
    """The ``done/total`` counts a bar named ``desc`` rendered."""
    return set(re.findall(re.escape(desc) + r": [^\r\n]*?(\d+/\d+) ", text))


@pytest.fixture(scope="module")
def quickstart(tiny_model, tmp_path_factory):
    """One tiny quickstart with every stage computed, and what it wrote to stdout and stderr
    (tqdm and the Trainer write wherever sys.stdout / sys.stderr point when they write)."""
    tmp = tmp_path_factory.mktemp("progress")
    overrides = [f"policy.model={tiny_model}", f"cache.dir={tmp / 'cache'}", "data.num_train=6", "data.num_eval=3",
                 "generator.num_candidates=3", "generator.max_new_tokens=8", "generator.dtype=float32",
                 "judge.dtype=float32", "optimizer.epochs=2", "optimizer.batch_size=2", "optimizer.logging_steps=1",
                 "optimizer.learning_rate=1e-3", "optimizer.mixed_precision=no", "evaluation.samples_per_prompt=2"]
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        summary = run(compose_config(overrides), output_dir=tmp / "run")
    return summary, out.getvalue(), err.getvalue()


def test_judge_diagnostics_and_kl_show_bars_with_totals(quickstart):
    _, _, err = quickstart
    assert _totals(err, "judge candidates") >= {"0/18", "18/18"}  # 6 prompts x 3 candidates, all judged
    probes = _totals(err, "diagnostics probes")
    assert probes and all(t.split("/")[1] in ("2", "3") for t in probes)
    assert any(t.split("/")[0] == t.split("/")[1] for t in probes)  # every probe counted
    for model in ("policy", "reference"):  # 3 held-out prompts x 2 samples, counted in sequences
        assert "0/6" in _totals(err, f"KL ({model})")
    assert re.search(r"KL \(policy\): [^\r\n]*seq/s", err)


def test_training_prints_a_bar_and_one_compact_line_per_logging_step(quickstart):
    summary, out, err = quickstart
    assert not RAW_DICT.search(out + err), "the Trainer's raw log dicts were printed"
    steps = -(-int(summary["preferences/pairs"]) // 2) * 2  # batch_size 2, 2 epochs
    lines = [(int(a), int(b)) for a, b in STEP_LINE.findall(err)]
    assert lines, err[-2000:]
    total = lines[0][1]
    assert [s for s, _ in lines] == list(range(1, total + 1))  # logging_steps=1: one line per optimizer step
    assert {t for _, t in lines} == {total}
    assert f"{total}/{total}" in _totals(err, "train dpo")
    assert re.search(rf"(?:^|[\r\n])dpo done  {total} steps", err)
    assert total == steps


def _judging(tiny_model, journal, prompts_n: int = 4):
    """``rank_in_chunks`` of a real pointwise judge on the tiny model, one prompt per group,
    returning what its bar wrote to stderr and how many candidates the judge scored."""
    import contextlib
    import io

    from rlaif.criteria import load_criterion
    from rlaif.judges import PointwiseJudge
    from rlaif.judges.base import rank_in_chunks
    from rlaif.models import ModelPool
    from rlaif.types import Candidate, Prompt

    ps = [Prompt(f"p{i}", "A film", [{"role": "user", "content": f"Review film {i}"}], "train")
          for i in range(prompts_n)]
    cands = [Candidate(p.id, k, t, 2, True, "m") for p in ps for k, t in enumerate(["Great fun.", "Dull.", "Fine."])]
    judge = PointwiseJudge(load_criterion("positive_sentiment"), ModelPool(), model=tiny_model, dtype="float32")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rank_in_chunks(judge, ps, cands, 1, journal)
    return err.getvalue(), len(cands)


def test_judge_bar_counts_resumed_groups_as_done_at_start(tiny_model, tmp_path):
    from rlaif.journal import Journal

    _judging(tiny_model, Journal(tmp_path / "j.jsonl"), prompts_n=2)  # an earlier attempt judged 2 of 4 prompts
    err, n = _judging(tiny_model, Journal(tmp_path / "j.jsonl"))
    first = re.search(r"judge candidates: [^\r\n]*?(\d+)/(\d+) ", err)
    assert first and first.groups() == ("6", str(n))  # the bar starts at the 6 resumed candidates of 12
    assert f"{n}/{n}" in _totals(err, "judge candidates")


def test_tqdm_disable_turns_bars_off(tiny_model, tmp_path, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert "judge candidates: " in _judging(tiny_model, None, prompts_n=2)[0]
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert "judge candidates" not in _judging(tiny_model, None, prompts_n=2)[0]
    monkeypatch.setenv("RANK", "1")  # a non-main process of a multi-process launch
    monkeypatch.delenv("TQDM_DISABLE")
    assert "judge candidates" not in _judging(tiny_model, None, prompts_n=2)[0]
