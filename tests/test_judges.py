"""Judges on the tiny random model, checked against log-probs computed by hand with plain forward passes."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from rlaif.config import conf_dir
from rlaif.criteria import Criterion
from rlaif.generators import HFGenerator
from rlaif.judges import ContrastiveJudge, PairwiseJudge, VaderJudge
from rlaif.models import ModelPool
from rlaif.types import Candidate, Prompt


@pytest.fixture(scope="module")
def criterion() -> Criterion:
    return Criterion.from_config(OmegaConf.load(conf_dir() / "criteria" / "positive_sentiment.yaml"))


@pytest.fixture(scope="module")
def pool() -> ModelPool:
    return ModelPool()


@pytest.fixture(scope="module")
def reference(sharp_model):
    """An independent copy of the (sharpened) tiny model and its tokenizer, loaded without the pool."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sharp_model)
    model = AutoModelForCausalLM.from_pretrained(sharp_model, dtype=torch.float32).eval()
    return model, tok


def _prompt(pid: str, text: str, system: str | None = None) -> Prompt:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": f"Continue this movie review: {text}"}]
    return Prompt(pid, text, msgs, "train")


PROMPTS = [
    _prompt("a", "The director"),
    _prompt("b", "A dull, boring and terrible movie with awful pacing, and", system="policy system prompt"),
    _prompt("c", "The cast and the score make this"),
]
RESPONSES = ["a great night at the cinema.", "weak writing", "wonderful, moving and beautifully acted, a film to see"]


def _ids(tok, messages, add_generation_prompt=True) -> list[int]:
    text = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def _mean_logp_by_hand(model, tok, messages, response) -> float:
    prefix = _ids(tok, messages)
    cont = tok(response, add_special_tokens=False)["input_ids"]
    seq = torch.tensor([prefix + cont])
    logp = torch.log_softmax(model(input_ids=seq).logits[0].float(), dim=-1)
    total = sum(float(logp[len(prefix) + j - 1, t]) for j, t in enumerate(cont))
    return total / len(cont)


@torch.no_grad()
def _p_first_by_hand(model, tok, messages, answer_ids) -> float:
    seq = torch.tensor([_ids(tok, messages)])
    logits = model(input_ids=seq).logits[0, -1].float()
    two = torch.log_softmax(logits, dim=-1)[answer_ids]
    return float(torch.softmax(two, dim=-1)[0])


# ---- contrastive ----------------------------------------------------------------------------------

def test_contrastive_score_matches_hand_computation(sharp_model, pool, criterion, reference):
    model, tok = reference
    judge = ContrastiveJudge(criterion, pool, model=sharp_model, dtype="float32", batch_size=2)
    scores = judge.score(PROMPTS, RESPONSES)
    assert len(scores) == len(PROMPTS)
    for p, r, s in zip(PROMPTS, RESPONSES, scores, strict=True):
        user = [m for m in p.messages if m["role"] != "system"]  # the policy's system prompt is replaced
        pos = _mean_logp_by_hand(model, tok, [{"role": "system", "content": criterion.get("contrastive.positive")},
                                              *user], r)
        neg = _mean_logp_by_hand(model, tok, [{"role": "system", "content": criterion.get("contrastive.negative")},
                                              *user], r)
        assert abs(pos - neg) > 1e-3  # the instruction matters, so the check below is not trivially satisfied
        assert s == pytest.approx(pos - neg, abs=1e-5)


def test_contrastive_batching_does_not_change_scores(tiny_model, pool, criterion):
    one = ContrastiveJudge(criterion, pool, model=tiny_model, dtype="float32", batch_size=1).score(PROMPTS, RESPONSES)
    many = ContrastiveJudge(criterion, pool, model=tiny_model, dtype="float32", batch_size=8).score(PROMPTS, RESPONSES)
    assert many == pytest.approx(one, abs=1e-5)


def test_contrastive_empty_response_is_invalid(tiny_model, pool, criterion):
    judge = ContrastiveJudge(criterion, pool, model=tiny_model, dtype="float32")
    scores = judge.score(PROMPTS[:2], ["", "fine text"])
    assert scores[0] is None and isinstance(scores[1], float)
    cands = [Candidate("a", 0, "", 0, True, "m"), Candidate("a", 1, "fine text", 2, True, "m")]
    judgments, verdicts = judge.rank(PROMPTS, cands)
    assert verdicts == []
    assert [j.valid for j in judgments] == [False, True]
    assert "invalid" in judgments[0].details


def test_contrastive_requires_its_wording(tiny_model, pool):
    with pytest.raises(ValueError, match="criteria.contrastive.positive"):
        ContrastiveJudge(Criterion("bare", "no wording"), pool, model=tiny_model)


def test_contrastive_as_trl_reward_function(tiny_model, pool, criterion):
    judge = ContrastiveJudge(criterion, pool, model=tiny_model, dtype="float32")
    prompts = [[{"role": "user", "content": p.messages[-1]["content"]}] for p in PROMPTS]
    completions = [[{"role": "assistant", "content": r}] for r in RESPONSES]
    rewards = judge(prompts=prompts, completions=completions, completion_ids=None, trainer_state=None)
    assert isinstance(rewards, list) and len(rewards) == len(PROMPTS)
    assert all(isinstance(x, float) and math.isfinite(x) for x in rewards)
    expected = judge.score([Prompt(str(i), "", m, "online") for i, m in enumerate(prompts)], RESPONSES)
    assert rewards == pytest.approx(expected, abs=1e-6)
    # plain-text prompts and completions work too
    plain = judge(prompts=[p.messages[-1]["content"] for p in PROMPTS], completions=RESPONSES)
    assert plain == pytest.approx(rewards, abs=1e-6)
    # an unscorable completion becomes NaN, not an exception
    with_empty = judge(prompts=prompts[:2], completions=[completions[0], [{"role": "assistant", "content": ""}]])
    assert math.isfinite(with_empty[0]) and math.isnan(with_empty[1])


# ---- model sharing ---------------------------------------------------------------------------------

def test_judge_and_generator_share_the_pool_model(sharp_model, criterion):
    pool = ModelPool()
    judge = ContrastiveJudge(criterion, pool, model=sharp_model, dtype="float32")
    before = judge.score(PROMPTS[:1], RESPONSES[:1])[0]
    generator = HFGenerator(model=sharp_model, dtype="float32")
    gen_model = pool.model(generator.model_name, generator.dtype)
    assert gen_model is pool.model(judge.backend.model_name, judge.backend.dtype)
    assert len(pool._models) == 1  # loaded once
    assert not gen_model.training
    assert all(not p.requires_grad for p in gen_model.parameters())
    # the judge really scores with that very object: changing its weights changes the judge's score
    with torch.no_grad():
        gen_model.get_output_embeddings().weight.mul_(3.0)
    after = judge.score(PROMPTS[:1], RESPONSES[:1])[0]
    assert abs(after - before) > 1e-3


def test_pool_distinguishes_dtypes(tiny_model):
    pool = ModelPool()
    assert pool.model(tiny_model, "float32") is not pool.model(tiny_model, "bfloat16")
    assert next(pool.model(tiny_model, "bfloat16").parameters()).dtype == torch.bfloat16
    assert pool.tokenizer(tiny_model) is pool.tokenizer(tiny_model)


# ---- rule judge ----------------------------------------------------------------------------------

def test_vader_scores_positive_above_negative():
    judge = VaderJudge()
    p = _prompt("x", "The film")
    good, bad = judge.score([p, p], ["is wonderful, moving and beautifully acted. I loved it!",
                                     "is a dull, boring and terrible mess. I hated it."])
    assert good > 0.5 and bad < -0.5
    assert judge.prefer([p], ["A great, joyful film."], ["An awful, miserable film."]) == [1.0]
    assert judge.name == "rule:vader"


def test_vader_best_of():
    judge = VaderJudge()
    prompts = [_prompt("x", "The film")]
    cands = [Candidate("x", 0, "terrible and awful", 3, True, "m"), Candidate("x", 1, "superb and delightful", 3, True, "m"),
             Candidate("x", 2, "it exists", 2, True, "m")]
    assert judge.best_of(prompts, cands) == {"x": 1}


# ---- pairwise -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pairwise(sharp_model, pool, criterion) -> PairwiseJudge:
    return PairwiseJudge(criterion, pool, model=sharp_model, dtype="float32", batch_size=3)


def test_render_puts_a_first_and_b_second(pairwise, criterion):
    p = PROMPTS[0]
    content = pairwise.render(p, "ALPHA text", "BETA text")[-1]["content"]
    assert content.index("Response 1:\nALPHA text") < content.index("Response 2:\nBETA text")
    swapped = pairwise.render(p, "BETA text", "ALPHA text")[-1]["content"]
    assert "Response 1:\nBETA text" in swapped and "Response 2:\nALPHA text" in swapped
    assert criterion.get("pairwise.question") in content
    assert p.messages[-1]["content"] in content


def test_compare_scores_both_orders_with_texts_swapped(pairwise, reference):
    model, tok = reference
    answer_ids = [tok(t, add_special_tokens=False)["input_ids"][0] for t in ("1", "2")]
    a = ["wonderful, moving and beautifully acted", "weak writing", "a great night"]
    b = ["dull and boring", "the score is great", "awful pacing, terrible"]
    results = pairwise.compare(PROMPTS, a, b)
    assert len(results) == len(PROMPTS)
    for p, x, y, (first, second) in zip(PROMPTS, a, b, results, strict=True):
        p1_ab = _p_first_by_hand(model, tok, pairwise.render(p, x, y), answer_ids)  # P("1") with x first
        p1_ba = _p_first_by_hand(model, tok, pairwise.render(p, y, x), answer_ids)  # P("1") with y first
        assert abs(p1_ab - p1_ba) > 1e-4  # the two orders really give different numbers here
        assert abs(p1_ab - (1 - p1_ba)) > 1e-4
        assert first == pytest.approx(p1_ab, abs=1e-5)
        assert second == pytest.approx(1 - p1_ba, abs=1e-5)
        assert 0 < first < 1 and 0 < second < 1


def test_prefer_averages_both_orders(pairwise):
    a, b = RESPONSES, list(reversed(RESPONSES))
    results = pairwise.compare(PROMPTS, a, b)
    prefs = pairwise.prefer(PROMPTS, a, b)
    assert prefs == pytest.approx([0.5 * (f + s) for f, s in results], abs=1e-7)
    # swapping a and b gives the complementary preference
    back = pairwise.prefer(PROMPTS, b, a)
    assert [x + y for x, y in zip(prefs, back, strict=True)] == pytest.approx([1.0] * len(prefs), abs=1e-5)


def test_pairwise_reward_needs_reference(pairwise):
    prompts = [[{"role": "user", "content": "Continue: The film"}]]
    completions = [[{"role": "assistant", "content": "is great"}]]
    with pytest.raises(ValueError, match="reference"):
        pairwise(prompts=prompts, completions=completions)
    rewards = pairwise(prompts=prompts * 2, completions=completions * 2,
                       reference=[[{"role": "assistant", "content": "is bad"}], "is fine"])
    assert len(rewards) == 2 and all(0.0 <= r <= 1.0 for r in rewards)


def test_pairwise_rank_scores_every_pair(pairwise):
    k = 4
    texts = ["great", "boring and dull", "a wonderful film", "terrible"]
    cands = [Candidate(p.id, i, f"{texts[i]} ({p.id})", 2, True, "m") for p in PROMPTS[:2] for i in range(k)]
    judgments, verdicts = pairwise.rank(PROMPTS[:2], cands)
    assert len(judgments) == len(cands)
    assert [(j.prompt_id, j.index) for j in judgments] == [(c.prompt_id, c.index) for c in cands]
    for pid in ("a", "b"):
        vs = [v for v in verdicts if v.prompt_id == pid]
        assert len(vs) == k * (k - 1) // 2
        assert {(v.a, v.b) for v in vs} == {(i, j) for i in range(k) for j in range(i + 1, k)}
    for j in judgments:
        assert j.valid and 0.0 <= j.score <= 1.0
        assert j.details["comparisons"] == k - 1
        wins = [v.p_a if v.a == j.index else 1 - v.p_a for v in verdicts
                if v.prompt_id == j.prompt_id and j.index in (v.a, v.b)]
        assert j.score == pytest.approx(sum(wins) / len(wins), abs=1e-9)
    # scores of one prompt average to 1/2: every comparison hands out one unit of win probability
    for pid in ("a", "b"):
        assert sum(j.score for j in judgments if j.prompt_id == pid) / k == pytest.approx(0.5, abs=1e-9)
    assert all(v.judge == pairwise.name and v.criterion == "positive_sentiment" for v in verdicts)


def test_pairwise_answer_tokens_must_be_single_tokens(tiny_model, pool, criterion):
    judge = PairwiseJudge(criterion, pool, model=tiny_model, dtype="float32", answer_tokens=("first", "second"))
    with pytest.raises(ValueError, match="single-token"):
        judge.compare(PROMPTS[:1], ["x"], ["y"])


def test_pairwise_requires_its_wording(tiny_model, pool):
    with pytest.raises(ValueError, match="criteria.pairwise.question"):
        PairwiseJudge(Criterion("bare", "no wording"), pool, model=tiny_model)


def test_pointwise_scores_are_memoised_and_order_preserving():
    class CountingVader(VaderJudge):
        calls: list[int] = []

        def score(self, prompts, responses):
            self.calls.append(len(responses))
            return super().score(prompts, responses)

    judge = CountingVader()
    texts = ["I loved it, wonderful!", "Dreadful and boring.", "I loved it, wonderful!", "It was fine."]
    first = judge.scores([PROMPTS[0]] * 4, texts)
    assert judge.calls == [3]  # the repeated text is scored once
    assert first == judge.score([PROMPTS[0]] * 4, texts)
    again = judge.scores([PROMPTS[0], PROMPTS[1]], ["Dreadful and boring.", "Dreadful and boring."])
    assert judge.calls[1:] == [4, 1]  # the direct score() call above, then only the unseen (prompt, text)
    assert again[0] == first[1]
    assert judge.prefer([PROMPTS[0]], [texts[0]], [texts[1]]) == [1.0]
