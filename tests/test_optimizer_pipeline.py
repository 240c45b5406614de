"""Optimizers inside the pipeline: best-of-n, self-rewarding DPO, budgets, the training history,
and the reward/judge compatibility checks that fail before any model loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import compose_config
from safetensors.torch import load_file

from rlaif.config import ConfigError, validate
from rlaif.criteria import load_criterion
from rlaif.judges import LengthJudge
from rlaif.optimizers.base import JudgeReward, TrainContext
from rlaif.optimizers.best_of_n import BestOfN, best_of_n_kl
from rlaif.pipeline import run
from rlaif.types import Candidate, Prompt


@pytest.fixture
def base(tiny_overrides) -> list[str]:
    """The tiny overrides without the DPO-specific ones (other optimizers have other keys)."""
    return [o for o in tiny_overrides if not o.startswith("optimizer.")] + ["tracker=none"]


def _weights(folder) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_best_of_n_keeps_the_judges_favourite():
    judge = LengthJudge(load_criterion("concise"), unit="words", target=None, prefer="longer")
    prompts = [Prompt("p", "x", [{"role": "user", "content": "x"}], "eval")]
    texts = ["a", "a b c", "a b", "a b c d e", "x y", "x", "x y z w", "x y z"]  # 2 slots x n=4
    pools = [Candidate("p", i, t, len(t.split()), True, "m", "best_of_n") for i, t in enumerate(texts)]
    counters: dict = {}
    chosen, stats = BestOfN(n=4).select(prompts, pools, JudgeReward(judge, counters=counters), k=2)
    assert [c.text for c in chosen] == ["a b c d e", "x y z w"]
    assert [c.index for c in chosen] == [0, 1] and all(c.source == "policy" for c in chosen)
    assert stats["eval/best_of_n_judge_calls"] == 8 == counters["judge_calls"]


def test_best_of_n_never_picks_an_unscorable_sample():
    prompts = [Prompt("p", "x", [{"role": "user", "content": "x"}], "eval")]
    pools = [Candidate("p", i, t, 1, True, "m") for i, t in enumerate(["long one here", "short", "nan", "nan"])]

    def reward(ps, texts):  # an unparseable verdict is NaN, never a score
        return [float("nan") if t != "short" else 0.1 for t in texts]

    chosen, stats = BestOfN(n=2).select(prompts, pools, reward, k=2)
    assert chosen[0].text == "short"
    assert chosen[1].text == "nan" and stats["eval/best_of_n_unscored_groups"] == 1


def test_best_of_n_run_reports_analytic_kl_and_judge_calls(base, tmp_path):
    cfg = compose_config(base + ["optimizer=best_of_n", "optimizer.n=3"])
    s = run(cfg, output_dir=tmp_path / "run")
    assert s["eval/kl"] == pytest.approx(best_of_n_kl(3)) == pytest.approx(math.log(3) - 2 / 3)
    assert s["eval/best_of_n_judge_calls"] == 3 * 2 * 3  # n x samples_per_prompt x num_eval
    assert not (tmp_path / "run" / "policy" / "model.safetensors").exists()  # nothing was trained
    assert json.loads((tmp_path / "run" / "policy" / "best_of_n.json").read_text())["n"] == 3


def test_dpo_run_records_history_and_budget_spent(base, tmp_path):
    cfg = compose_config(base + ["optimizer.epochs=1", "optimizer.batch_size=4", "optimizer.mixed_precision=no"])
    out = tmp_path / "run"
    s = run(cfg, output_dir=out)
    cands = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert s["train/judge_calls"] == len(cands) == 6 * 3  # pointwise judge: one call per candidate
    assert s["train/generated_tokens"] == sum(c["num_tokens"] for c in cands)
    rows = [json.loads(line) for line in (out / "train_history.jsonl").read_text().splitlines()]
    assert rows and all("train/step" in r for r in rows) and any("train/loss" in r for r in rows)


def test_self_rewarding_rounds_train_and_resume(tiny_model, tmp_path):
    from rlaif.optimizers.self_rewarding import SelfRewardingDPO

    prompts = [Prompt(f"p{i}", f"t{i}", [{"role": "user", "content": f"Say something about {w}."}], "train")
               for i, w in enumerate(["cats", "rain", "tea", "maps"])]
    opt = SelfRewardingDPO(rounds=2, num_candidates=3, judge_dtype="float32", sample_batch_size=8,
                           dpo={"learning_rate": 1e-3, "epochs": 1, "batch_size": 4, "mixed_precision": "no"})

    def ctx(out):
        return TrainContext(policy_path=tiny_model, output_dir=out, seed=0, prompts=prompts,
                            criterion=load_criterion("positive_sentiment"), checkpoint_dir=tmp_path / "ckpt",
                            max_new_tokens=6)

    c1 = ctx(tmp_path / "out1")
    last = opt.train(c1)
    assert last["train/rounds"] == 2
    rounds = [r["train/round"] for r in c1.history if "train/round" in r]
    assert rounds == [1, 2]
    assert c1.counters["judge_calls"] == 2 * 4 * 3  # the policy rated its own samples, each round
    before, end = _weights(Path(tiny_model)), _weights(tmp_path / "out1")
    assert any((before[k] - end[k]).abs().max() > 0 for k in before)
    r1 = (tmp_path / "ckpt" / "round_1" / "round.json").stat().st_mtime_ns
    # A rerun (e.g. after a kill) finds both rounds done: nothing is sampled or trained again.
    c2 = ctx(tmp_path / "out2")
    opt.train(c2)
    assert c2.counters["judge_calls"] == 0 and c2.counters["generated_tokens"] == 0
    assert (tmp_path / "ckpt" / "round_1" / "round.json").stat().st_mtime_ns == r1
    assert [r for r in c2.history] == [r for r in c1.history]
    again = _weights(tmp_path / "out2")
    assert all((again[k] == end[k]).all() for k in end)


@pytest.mark.parametrize("optimizer", ["best_of_n", "ppo", "grpo", "rloo", "online_dpo"])
def test_pointwise_reward_optimizer_with_pairwise_judge_fails_validation(base, optimizer):
    from rlaif.config import conf_dir

    if not (conf_dir() / "optimizer" / f"{optimizer}.yaml").exists():
        pytest.fail(f"conf/optimizer/{optimizer}.yaml is missing")
    cfg = compose_config(base + [f"optimizer={optimizer}", "judge=pairwise"])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    assert f"optimizer={optimizer} needs a pointwise reward" in msg
    assert "optimizer.reward_reference=reference_policy" in msg and "reward_source=reward_model" in msg
    validate(compose_config(base + [f"optimizer={optimizer}", "judge=pairwise", "optimizer.reward_reference=reference_policy"]))


def test_best_of_n_with_pairwise_judge_against_reference_samples(base, tmp_path):
    cfg = compose_config(base + ["optimizer=best_of_n", "optimizer.n=2", "judge=pairwise",
                                 "optimizer.reward_reference=reference_policy"])
    s = run(cfg, output_dir=tmp_path / "run")
    assert s["eval/best_of_n_judge_calls"] == 2 * 2 * 3


def test_budget_values_are_checked(base):
    with pytest.raises(ConfigError, match="budget.judge_calls: expected null, a positive int, or 'offline'"):
        validate(compose_config(base + ["budget.judge_calls=-3"]))
    with pytest.raises(ConfigError, match="set judge_calls or generated_tokens, not both"):
        validate(compose_config(base + ["budget.judge_calls=10", "budget.generated_tokens=10"]))


TINY = {
    "grpo": ["optimizer.max_steps=1", "optimizer.batch_size=6", "optimizer.num_generations=3"],
    "rloo": ["optimizer.max_steps=1", "optimizer.batch_size=6", "optimizer.num_generations=3"],
    "online_dpo": ["optimizer.max_steps=1", "optimizer.batch_size=3"],
    "cai_sft": ["optimizer.epochs=1", "optimizer.batch_size=4", "optimizer.critique_max_new_tokens=6"],
    "ppo": ["optimizer.total_episodes=12", "optimizer.rollout_batch_size=6", "optimizer.ppo_epochs=1",
            "optimizer.num_minibatches=1"],
}


@pytest.mark.parametrize("optimizer", list(TINY))
def test_every_optimizer_trains_inside_the_pipeline(optimizer, base, tiny_model, tmp_path):
    cfg = compose_config(base + [f"optimizer={optimizer}", "optimizer.learning_rate=1e-3", *TINY[optimizer]]
                         + (["criteria=constitution"] if optimizer == "cai_sft" else []))
    out = tmp_path / "run"
    s = run(cfg, output_dir=out)
    before, after = _weights(Path(tiny_model)), _weights(out / "policy")
    assert any((before[k] - after[k]).abs().max() > 0 for k in before), "the policy did not change"
    rows = [json.loads(line) for line in (out / "train_history.jsonl").read_text().splitlines()]
    assert rows and all("train/step" in r for r in rows)
    assert s["train/generated_tokens"] > 0
    if optimizer != "cai_sft":  # online methods call the judge on their own samples
        assert s["train/judge_calls"] > 0
    assert math.isfinite(s["eval/kl"])


class JudgeCalls:
    """Every call that reaches a judge (the real one: the methods below only count, then call through),
    and whether it came while the pipeline's training stage ran."""

    def __init__(self, monkeypatch):
        from rlaif.judges.base import Judge
        from rlaif.stages.train import Train

        self.calls: list[dict] = []
        self.training = False
        build = Train.build

        def counted_build(stage, view, work):  # training runs in the writer the stage's build returns
            write = build(stage, view, work)

            def counted_write(d):
                self.training = True
                try:
                    return write(d)
                finally:
                    self.training = False
            return counted_write

        monkeypatch.setattr(Train, "build", counted_build)
        for method in ("scored", "prefer"):
            monkeypatch.setattr(Judge, method, self._counting(method, getattr(Judge, method)))

    def _counting(self, method, fn):
        def counted(judge, prompts, *texts):
            self.calls.append({"judge": type(judge).__name__, "method": method, "training": self.training,
                               "prompt_ids": [p.id for p in prompts], "texts": texts})
            return fn(judge, prompts, *texts)
        return counted

    def during_training(self, judge: str | None = None, method: str | None = None) -> list[dict]:
        return [c for c in self.calls if c["training"] and judge in (None, c["judge"])
                and method in (None, c["method"])]


def test_distilled_rlaif_trains_a_reward_model_on_the_judges_pairs(base, tiny_model, tmp_path, monkeypatch):
    judged = JudgeCalls(monkeypatch)
    cfg = compose_config(base + ["optimizer=grpo", "optimizer.learning_rate=1e-3", *TINY["grpo"],
                                 "optimizer.reward_source=reward_model", "reward_model.epochs=1",
                                 "reward_model.batch_size=4", "reward_model.eval_fraction=0"])
    out = tmp_path / "run"
    s = run(cfg, output_dir=out)
    assert s["reward_model/num_train_pairs"] > 0 and math.isfinite(s["reward_model/loss"])
    # The run's judge labelled the candidates before training ...
    assert any(c["judge"] == "ContrastiveJudge" and not c["training"] for c in judged.calls)
    # ... and was never asked during training: the reward model scored every online sample.
    assert [c["judge"] for c in judged.during_training()] == ["RewardModelJudge"] * len(judged.during_training())
    scored = sum(len(c["prompt_ids"]) for c in judged.during_training("RewardModelJudge", "scored"))
    assert scored == s["train/judge_calls"] > 0
    assert "time/reward_model_s" in s


def test_online_optimizer_with_a_pairwise_judge_against_reference_samples(base, tiny_model, tmp_path, monkeypatch):
    """optimizer.reward_reference=reference_policy: each online sample is compared by the pairwise
    judge with the reference policy's first candidate for its prompt."""
    judged = JudgeCalls(monkeypatch)
    cfg = compose_config(base + ["optimizer=grpo", "optimizer.learning_rate=1e-3", *TINY["grpo"], "judge=pairwise",
                                 "optimizer.reward_reference=reference_policy"])
    out = tmp_path / "run"
    s = run(cfg, output_dir=out)
    cands = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    reference = {c["prompt_id"]: c["text"] for c in cands if c["index"] == 0}
    calls = judged.during_training("PairwiseJudge", "prefer")
    assert calls and judged.during_training() == calls  # the pairwise judge gave every training reward
    for c in calls:
        samples, refs = c["texts"]
        assert list(refs) == [reference[pid] for pid in c["prompt_ids"]]
        assert len(samples) == len(refs)
    assert sum(len(c["prompt_ids"]) for c in calls) == s["train/judge_calls"] > 0
    before, after = _weights(Path(tiny_model)), _weights(out / "policy")
    assert any((before[k] - after[k]).abs().max() > 0 for k in before), "the policy did not change"
