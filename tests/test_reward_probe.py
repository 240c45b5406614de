"""The probe reward model (reward_model.method=probe): a linear Bradley-Terry head on frozen,
response-averaged features, saved so that the reward-model judge scores exactly what was fitted."""

from __future__ import annotations

import json
import random

import pytest
import torch

from rlaif.criteria import Criterion
from rlaif.judges.reward_model import RewardModelJudge
from rlaif.optimizers.reward_model import RewardModelTrainer
from rlaif.types import PreferencePair, Prompt

GOOD = ["the film is wonderful", "moving and beautifully acted", "a great night at the cinema", "wonderful score"]
BAD = ["dull, boring and terrible", "awful pacing and weak writing", "a terrible movie", "boring cast"]
OPENINGS = ["The director", "The cast", "This movie", "The score", "A film", "The writing", "The night", "Acted"]


def _prompt(i: int) -> Prompt:
    return Prompt(id=f"p{i}", text=OPENINGS[i % len(OPENINGS)], split="train",
                  messages=[{"role": "user", "content": f"Continue this movie review: {OPENINGS[i % len(OPENINGS)]}"}])


def _pairs(n_prompts: int = 16, seed: int = 0) -> list[PreferencePair]:
    rng = random.Random(seed)
    out = []
    for i in range(n_prompts):
        p = _prompt(i)
        for j in range(3):
            out.append(PreferencePair(prompt=p.messages, chosen=[{"role": "assistant", "content": rng.choice(GOOD)}],
                                      rejected=[{"role": "assistant", "content": rng.choice(BAD)}], prompt_id=p.id,
                                      chosen_index=j, rejected_index=j + 3, chosen_score=1.0, rejected_score=0.0,
                                      margin=1.0, judge="test", criterion="positive_sentiment"))
    return out


def _trainer(**kw) -> RewardModelTrainer:
    return RewardModelTrainer(**({"method": "probe", "probe_layer": 1, "probe_l2": 0.01, "eval_fraction": 0.25,
                                  "judge_dtype": "float32", "judge_batch_size": 4} | kw))


def test_probe_learns_the_pairs_and_the_judge_scores_what_was_fitted(tiny_model, tmp_path):
    pairs = _pairs()
    out = tmp_path / "rm"
    m = _trainer().train(tiny_model, pairs, out, seed=0)
    assert m["reward_model/num_train_pairs"] + m["reward_model/num_eval_pairs"] == len(pairs)
    assert m["reward_model/num_eval_pairs"] > 0
    assert m["reward_model/train_accuracy"] >= 0.95 and m["reward_model/accuracy"] >= 0.9
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rlaif_pooling"] == "response_mean" and cfg["num_hidden_layers"] == 1
    assert cfg["rlaif_probe"] == {"layer": 1, "of_layers": 2, "l2": 0.01}

    # The judge reads the saved folder: its margins on the held-out pairs give the reported accuracy.
    judge = RewardModelJudge(Criterion("positive_sentiment", "x"), model=str(out), dtype="float32", batch_size=3)
    held_ids = sorted({p.prompt_id for p in pairs})
    random.Random(0).shuffle(held_ids)
    held = set(held_ids[: round(0.25 * len(held_ids))])
    evals = [p for p in pairs if p.prompt_id in held]
    prompts = [_prompt(int(p.prompt_id[1:])) for p in evals]
    chosen = judge.score(prompts, [p.chosen[0]["content"] for p in evals])
    rejected = judge.score(prompts, [p.rejected[0]["content"] for p in evals])
    wins = [c > r for c, r in zip(chosen, rejected, strict=True)]
    assert sum(wins) / len(wins) == pytest.approx(m["reward_model/accuracy"])

    # By hand: the frozen block's last hidden state (after the final norm), averaged over the
    # response's tokens (the assistant header excluded), through the head.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    p, r = prompts[0], evals[0].chosen[0]["content"]
    full = tok(tok.apply_chat_template([*p.messages, {"role": "assistant", "content": r}], tokenize=False),
               add_special_tokens=False)["input_ids"]
    head = tok(tok.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True),
               add_special_tokens=False)["input_ids"]
    assert full[: len(head)] == head
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([full])).last_hidden_state[0, len(head):]
        by_hand = float(model.score(hidden).mean())
    assert chosen[0] == pytest.approx(by_hand, abs=1e-5)
    # Batched with padding (batch 3) and alone: the same numbers.
    alone = RewardModelJudge(Criterion("positive_sentiment", "x"), model=str(out), dtype="float32", batch_size=1)
    assert alone.score(prompts, [p.chosen[0]["content"] for p in evals]) == pytest.approx(chosen, abs=1e-5)


def test_probe_penalty_is_a_real_setting(tiny_model, tmp_path):
    """A huge L2 penalty shrinks the head towards zero: the fitted margins shrink with it."""
    pairs = _pairs(8)
    small = _trainer(eval_fraction=0.0).train(tiny_model, pairs, tmp_path / "a", seed=0)
    big = _trainer(eval_fraction=0.0, probe_l2=1e3).train(tiny_model, pairs, tmp_path / "b", seed=0)
    assert small["reward_model/loss"] < big["reward_model/loss"] < 0.6932  # log 2: a zero head
    w_small = _head_norm(tmp_path / "a")
    w_big = _head_norm(tmp_path / "b")
    assert w_big < 0.1 * w_small


def _head_norm(folder) -> float:
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors"))
    return float(weights["score.weight"].norm())


def test_probe_layer_beyond_the_model_is_refused_before_weights_load(tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"reward_model.probe_layer=5: .* has 2 blocks; use 1 to 2"):
        _trainer(probe_layer=5).train(tiny_model, _pairs(4), tmp_path / "rm", seed=0)
    assert not (tmp_path / "rm").exists()


def test_probe_options_are_checked():
    from rlaif.options import OptionsError

    with pytest.raises(OptionsError, match="method"):
        RewardModelTrainer(method="linear")
    with pytest.raises(OptionsError, match="probe_layer"):
        RewardModelTrainer(method="probe", probe_layer=0)
    with pytest.raises(OptionsError, match="probe_l2"):
        RewardModelTrainer(method="probe", probe_l2=-1.0)


def test_an_unknown_pooling_in_a_saved_reward_model_is_refused(tiny_model, tmp_path):
    out = tmp_path / "rm"
    _trainer(eval_fraction=0.0).train(tiny_model, _pairs(4), out, seed=0)
    cfg = json.loads((out / "config.json").read_text())
    cfg["rlaif_pooling"] = "max"
    (out / "config.json").write_text(json.dumps(cfg))
    judge = RewardModelJudge(Criterion("positive_sentiment", "x"), model=str(out), dtype="float32")
    with pytest.raises(ValueError, match="rlaif_pooling='max'"):
        judge.score([_prompt(0)], ["fine"])
