"""rlaif-bench on the tiny model: every row measured, the table printed, the JSON sane.

No assertion on speed: a benchmark reports what it measured."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from rlaif import bench

BASELINED = ("judge contrastive vs bare forward", "judge contrastive vs naive", "judge contrastive vs full sequences",
             "judge pairwise vs bare forward", "judge pairwise vs naive", "judge pairwise vs full sequences",
             "generate vs model.generate", "dpo step vs TRL")
UNPAIRED = ("ppo iteration", "ppo sampling", "ppo rollout forwards", "ppo scoring", "ppo update")


def test_bench_small_writes_every_row(tiny_model, tmp_path, capsys):
    out = tmp_path / "bench.json"
    import os

    before = os.environ.get("TQDM_DISABLE")
    assert bench.main(["--model", tiny_model, "--sizes", "small", "--repeats", "1", "--out", str(out)]) == 0
    assert os.environ.get("TQDM_DISABLE") == before  # the bars of whatever runs next in this process stay on
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    rows = {r["name"]: r for r in data["rows"]}
    dtype = data["precision"]["dtype"]
    assert f"matmul {dtype}" in rows and data["peak_flops"] > 0 and data["peak_flops_float32"] > 0
    for name in (*BASELINED, *UNPAIRED):
        assert name in rows, name
        assert name in printed
        assert rows[name]["rlaif_s"] > 0, name
    for name in BASELINED:
        r = rows[name]
        assert r["baseline_s"] > 0 and math.isfinite(r["ratio"]) and r["ratio"] > 0, r
        assert r["ratio"] == pytest.approx(r["baseline_s"] / r["rlaif_s"])
    if importlib.util.find_spec("vllm") is None:  # with vLLM: tests/test_vllm.py::test_bench_vllm_rows
        assert "vLLM not installed" in rows["vLLM"]["note"]
    fractions = [r["peak_fraction"] for r in data["rows"] if r["peak_fraction"] is not None]
    assert len(fractions) >= 7  # judges, generation, DPO, three PPO phases
    # A stage cannot beat the measured peak by much (a small matmul under-measures it a little).
    assert all(0 < f < 3 for f in fractions), fractions
    phases = sum(rows[n]["rlaif_s"] for n in ("ppo sampling", "ppo rollout forwards", "ppo scoring", "ppo update"))
    assert phases == pytest.approx(rows["ppo iteration"]["rlaif_s"])


def test_bench_only_and_bad_section(tiny_model, tmp_path):
    out = tmp_path / "b.json"
    bench.main(["--model", tiny_model, "--sizes", "small", "--only", "matmul", "--repeats", "1", "--out", str(out)])
    names = [r["name"] for r in json.loads(out.read_text())["rows"]]
    assert names and all(n.startswith("matmul") for n in names)
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "judge,speed"])


def test_quickstart_rows_from_a_real_run(tiny_model, tiny_overrides, tmp_path):
    """The quickstart section runs ``rlaif`` (shrunk to seconds on the tiny model) and reads back its
    stage times, peak RSS and an estimated compute floor."""
    from rlaif.models import ModelPool

    pool = ModelPool()
    rows = bench.bench_quickstart(tiny_overrides, pool.tokenizer(tiny_model),
                                  bench.n_params(pool.model(tiny_model)), 1e10)
    names = [r["name"] for r in rows]
    assert "quickstart generate" in names and "quickstart train" in names, names
    total = rows[-1]
    assert total["name"] == "quickstart total" and total["rlaif_s"] > 0
    assert "peak RSS" in total["what"] and 0 < total["peak_fraction"] < 1


def test_quickstart_rows_from_the_run_folder_the_user_names(tiny_model, tiny_overrides, tmp_path):
    """A ``hydra.run.dir=`` among the overrides is where the run lands: its records are read from
    there and kept."""
    from rlaif.models import ModelPool

    pool = ModelPool()
    mine = tmp_path / "mine"
    # this run turns the cache back on (the user's overrides come last), so it leaves its stages there
    rows = bench.bench_quickstart([*tiny_overrides, f"hydra.run.dir={mine}", "cache.enabled=true"],
                                  pool.tokenizer(tiny_model), bench.n_params(pool.model(tiny_model)), 1e10)
    assert rows[-1]["name"] == "quickstart total" and rows[-1]["rlaif_s"] > 0
    assert (mine / "summary.json").is_file()
    # by default the stage cache is off: the same run again computes its stages instead of reading them back
    again = tmp_path / "again"
    bench.bench_quickstart([*tiny_overrides, f"hydra.run.dir={again}"], pool.tokenizer(tiny_model),
                           bench.n_params(pool.model(tiny_model)), 1e10)
    assert json.loads((again / "summary.json").read_text()).get("cache/hits", 0) == 0
