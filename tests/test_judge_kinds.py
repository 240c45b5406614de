"""The judge kinds beyond contrastive/pairwise: pointwise, generative, reward model, rule
(length, regex, callable), panel, multi-criterion; constitution principles and criteria wording.

Model-based judges run on the tiny random model (sharpened where the check needs the model to
react to its input) and are compared with plain forward passes; nothing is mocked.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import build_tiny_model, compose_config
from hydra.utils import instantiate
from test_judges import PROMPTS, RESPONSES, _prompt  # noqa: E402,F401 - shared fixtures data

from rlaif.config import conf_dir, group_options, validate
from rlaif.criteria import Criterion, load_criterion, required_wording, worded_kinds, wording_problems
from rlaif.judges import (
    CallableJudge,
    GenerativeJudge,
    LengthJudge,
    MultiCriterionJudge,
    PanelJudge,
    PointwiseJudge,
    RegexJudge,
    RewardModelJudge,
    VaderJudge,
    parse_verdict,
)
from rlaif.judges.generative import p_first_slot
from rlaif.judges.pointwise import expected_rating
from rlaif.models import ModelPool
from rlaif.types import Candidate

SCALE = 10.0


# ---- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def criterion() -> Criterion:
    return load_criterion("positive_sentiment")


@pytest.fixture(scope="module")
def pool() -> ModelPool:
    return ModelPool()


@pytest.fixture(scope="module")
def reference(sharp_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sharp_model)
    return AutoModelForCausalLM.from_pretrained(sharp_model, dtype=torch.float32).eval(), tok


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory) -> str:
    """A tiny randomly initialised LlamaForSequenceClassification (num_labels=1) with the tiny tokenizer."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    base = build_tiny_model(tmp_path_factory.mktemp("rm-base"))
    tok = AutoTokenizer.from_pretrained(base)
    cfg = AutoConfig.from_pretrained(base)
    cfg.num_labels = 1
    cfg.pad_token_id = tok.pad_token_id
    torch.manual_seed(1)
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():  # scores of order 1 rather than 1e-2, so that tolerances mean something
        model.score.weight.mul_(50.0)
    out = tmp_path_factory.mktemp("tiny-rm")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def slot_a_model(tiny_model, tmp_path_factory) -> str:
    """The tiny model with its embeddings set so that greedy decoding answers "A" and then EOS to
    any chat: a generative judge that always picks the first slot, whatever the texts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    a, eos, big = tok.convert_tokens_to_ids("A"), tok.eos_token_id, 50.0
    with torch.no_grad():  # two embedding dimensions large enough to dominate the residual stream
        emb = model.get_input_embeddings().weight  # tied with the output layer
        emb[:, 0], emb[:, 1] = big, 0.0
        emb[a, 0], emb[a, 1] = 2 * big, big  # after any other token, "A" scores highest
        emb[eos, 1] = 4 * big  # after "A", EOS does
    out = tmp_path_factory.mktemp("slot-a-llama")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


CANDIDATE_TEXTS = ["great", "boring and dull film", "a wonderful film to see"]


def _candidates(prompts, texts=CANDIDATE_TEXTS) -> list[Candidate]:
    return [Candidate(p.id, i, f"{t} ({p.id})", 3, True, "m") for p in prompts for i, t in enumerate(texts)]


def _ids(tok, messages, add_generation_prompt=True) -> list[int]:
    text = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


# ---- pointwise ----------------------------------------------------------------------------------

@torch.no_grad()
def _rating_probs_by_hand(model, tok, messages, ratings, renormalise=True) -> list[float]:
    logits = model(input_ids=torch.tensor([_ids(tok, messages)])).logits[0, -1].float()
    ids = [tok(str(r), add_special_tokens=False)["input_ids"] for r in ratings]
    assert all(len(i) == 1 for i in ids)
    sub = torch.log_softmax(logits, dim=-1)[[i[0] for i in ids]]
    return (torch.softmax(sub, dim=-1) if renormalise else sub.exp()).tolist()


def test_pointwise_score_is_expected_rating_from_a_plain_forward_pass(sharp_model, pool, criterion, reference):
    model, tok = reference
    judge = PointwiseJudge(criterion, pool, model=sharp_model, dtype="float32", batch_size=2)
    scores = judge.score(PROMPTS, RESPONSES)
    for p, r, s in zip(PROMPTS, RESPONSES, scores, strict=True):
        chat = judge.render(p, r)
        content = chat[-1]["content"]
        assert criterion.get("pointwise.question") in content and r in content
        assert p.messages[-1]["content"] in content and "from 1 (worst) to 9 (best)" in content
        probs = _rating_probs_by_hand(model, tok, chat, range(1, 10))
        assert max(probs) - min(probs) > 1e-3  # not uniform, so the expectation is informative
        expected = sum(i * q for i, q in zip(range(1, 10), probs, strict=True))
        assert s == pytest.approx((expected - 1) / 8, abs=1e-5)
        assert 0.0 <= s <= 1.0
    assert len({round(s, 6) for s in scores}) == len(scores)  # the judge reacts to the response


def test_pointwise_other_scale_and_rank_details(sharp_model, pool, criterion, reference):
    model, tok = reference
    judge = PointwiseJudge(criterion, pool, model=sharp_model, dtype="float32", min_rating=0, max_rating=4)
    s = judge.score(PROMPTS[:1], RESPONSES[:1])[0]
    probs = _rating_probs_by_hand(model, tok, judge.render(PROMPTS[0], RESPONSES[0]), range(5))
    assert s == pytest.approx(sum(i * q for i, q in enumerate(probs)) / 4, abs=1e-5)
    judgments, verdicts = judge.rank(PROMPTS[:2], _candidates(PROMPTS[:2]))
    assert verdicts == [] and all(j.valid for j in judgments)
    assert all(j.details["expected_rating"] == pytest.approx(4 * j.score) for j in judgments)
    mass = sum(_rating_probs_by_hand(model, tok, judge.render(PROMPTS[0], RESPONSES[0]), range(5), renormalise=False))
    assert judge.last_details[0]["rating_mass"] != judge.last_details[1]["rating_mass"]
    judge.score(PROMPTS[:1], RESPONSES[:1])
    assert judge.last_details[0]["rating_mass"] == pytest.approx(mass, abs=1e-5)
    strict = PointwiseJudge(criterion, pool, model=sharp_model, dtype="float32", min_rating=0, max_rating=4,
                            min_rating_mass=mass + 1e-3)
    assert strict.score(PROMPTS[:1], RESPONSES[:1]) == [None]  # too little mass on the ratings: invalid
    with pytest.raises(ValueError, match="single digits"):
        PointwiseJudge(criterion, pool, model=sharp_model, min_rating=1, max_rating=10)


def _texts_cands(prompt, texts) -> list[Candidate]:
    return [Candidate(prompt.id, i, t, 3, True, "m") for i, t in enumerate(texts)]


def _own_details(judge, prompt, text) -> dict:
    """What a fresh judge records for one response scored alone (nothing memoised)."""
    fresh = PointwiseJudge(judge.criterion, backend=judge.backend, min_rating=judge.ratings[0],
                           max_rating=judge.ratings[-1])
    s = fresh.score([prompt], [text])[0]
    return {"score": s, **fresh.last_details[0]}


def test_pointwise_rank_on_repeated_responses_keeps_each_candidates_details(sharp_model, pool, criterion):
    judge = PointwiseJudge(criterion, pool, model=sharp_model, dtype="float32")
    texts = ["4", "a wonderful film", "4", "", ""]  # repeated answers, as a policy often gives
    judgments, _ = judge.rank(PROMPTS[:1], _texts_cands(PROMPTS[0], texts))
    assert [j.index for j in judgments] == list(range(len(texts)))
    for j, t in zip(judgments, texts, strict=True):
        own = _own_details(judge, PROMPTS[0], t)
        assert j.score == pytest.approx(own["score"], abs=1e-6)
        assert j.details["expected_rating"] == pytest.approx(own["expected_rating"], abs=1e-5)
        assert j.details["rating_mass"] == pytest.approx(own["rating_mass"], abs=1e-5)
    assert judgments[0].details["expected_rating"] != pytest.approx(judgments[1].details["expected_rating"], abs=1e-6)


def test_pointwise_rank_of_memoised_items_does_not_reuse_the_last_calls_details(sharp_model, pool, criterion):
    judge = PointwiseJudge(criterion, pool, model=sharp_model, dtype="float32")
    first = _texts_cands(PROMPTS[0], ["great", "dull and boring"])
    before, _ = judge.rank(PROMPTS[:1], first)
    judge.rank(PROMPTS[1:2], _texts_cands(PROMPTS[1], ["the cast", "a night at the cinema"]))  # other texts
    again, _ = judge.rank(PROMPTS[:1], first)  # every item is memoised now
    assert [j.details for j in again] == [j.details for j in before]
    assert [j.score for j in again] == [j.score for j in before]
    for j in again:
        assert j.details["expected_rating"] == pytest.approx(1 + 8 * j.score)
    # scores read back from a journal come with their details too
    resumed = PointwiseJudge(criterion, pool, model=sharp_model, dtype="float32")
    resumed.remember(PROMPTS[:1], first, before)
    back, _ = resumed.rank(PROMPTS[:1], first)
    assert [j.details for j in back] == [j.details for j in before]
    assert resumed.last_details == []  # nothing reached the model


def test_expected_rating_renormalises_and_never_defaults():
    assert expected_rating([None] * 3, [1, 2, 3]) is None  # e.g. no rating among an API's top log-probs
    assert expected_rating([-math.inf] * 3, [1, 2, 3]) is None
    # a missing option counts as probability 0; the others are renormalised
    assert expected_rating([math.log(0.2), None, math.log(0.6)], [1, 2, 3]) == pytest.approx((0.2 + 1.8) / 0.8)
    assert expected_rating([0.0, 0.0], [1, 3]) == pytest.approx(2.0)


def test_pointwise_requires_its_wording(tiny_model, pool):
    with pytest.raises(ValueError, match="criteria.pointwise.question"):
        PointwiseJudge(Criterion("bare", "no wording"), pool, model=tiny_model)


# ---- generative: parsing ------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("Verdict: [[A]]", "A"), ("verdict: [[b]]", "B"), ("[[tie]]", "tie"), ("[[C]]", "tie"), ("[[ a ]]", "A"),
    ("A seems fine... [[A]]. On reflection, [[B]]", "B"), ("[[A]] Verdict: B", "A"),
    ("Verdict: A", "A"), ("VERDICT: b.", "B"), ("Final verdict: Response (b)", "B"), ("Winner: tie", "tie"),
    ("Final answer: Output (a)", "A"), ("Output (a)", "A"), ("B", "B"), ("**A**", "A"),
    ("Response A is better.", "A"), ("response b is clearly better than response a", "B"),
    ("Output (b) is worse.", "A"), ("I prefer Assistant B.", "B"), ("Both responses are equally good.", "tie"),
    ("Assistant A is more helpful.", "A"), ("Response B is less helpful.", "A"),
    ("Response A is better. Wait, no: Response B is better.", "B"),
    ("my answer is a bit long", None), ("I would choose a different approach", None),
    ("there is a better way", None), ("A or B?", None), ("The film is great", None), ("", None), ("  \n", None),
    (None, None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_verdict_to_probability():
    assert [p_first_slot(v) for v in ("A", "B", "tie", None)] == [1.0, 0.0, 0.5, None]


# ---- generative: on the model -------------------------------------------------------------------

@torch.no_grad()
def _greedy_by_hand(model, tok, messages, n) -> str:
    ids = torch.tensor([_ids(tok, messages)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_generative_judges_both_orders_and_keeps_unparseable_as_invalid(sharp_model, pool, criterion, reference):
    model, tok = reference
    judge = GenerativeJudge(criterion, pool, model=sharp_model, dtype="float32", batch_size=1, max_new_tokens=6)
    prompts = PROMPTS[1:2]
    cands = _candidates(prompts)
    judgments, verdicts = judge.rank(prompts, cands)
    assert len(verdicts) == 3 and len(judge.verdict_details) == 3
    text = {(c.prompt_id, c.index): c.text for c in cands}
    by_id = {p.id: p for p in prompts}
    differs = 0
    for v, d in zip(verdicts, judge.verdict_details, strict=True):
        assert (d["prompt_id"], d["a"], d["b"]) == (v.prompt_id, v.a, v.b)
        a, b = text[(v.prompt_id, v.a)], text[(v.prompt_id, v.b)]
        # the raw texts are the model's greedy answers to the two orders, texts really swapped
        p = by_id[v.prompt_id]
        assert d["raw_first"] == _greedy_by_hand(model, tok, judge.render(p, a, b), 6)
        assert d["raw_second"] == _greedy_by_hand(model, tok, judge.render(p, b, a), 6)
        differs += d["raw_first"] != d["raw_second"]
        # parsed honestly: garbage is None (invalid), never defaulted to a slot
        assert d["verdict_first"] == parse_verdict(d["raw_first"])
        assert d["verdict_second"] == parse_verdict(d["raw_second"])
        assert v.p_a_first == p_first_slot(d["verdict_first"])
        assert v.p_a_second == (None if d["verdict_second"] is None else 1.0 - p_first_slot(d["verdict_second"]))
    assert differs > 0
    # a random tiny model writes garbage: unparseable comparisons are invalid, and so is a judgment
    # with no valid comparison
    assert any(v.p_a is None for v in verdicts)
    for j in judgments:
        valid = [v for v in verdicts if v.prompt_id == j.prompt_id and j.index in (v.a, v.b) and v.p_a is not None]
        assert j.valid == bool(valid)
        assert j.details["invalid_comparisons"] == 2 - len(valid)
    prefs = judge.prefer(PROMPTS[:2], RESPONSES[:2], RESPONSES[1:3])
    assert [p is None for p in prefs] == [r["verdict_first"] is None or r["verdict_second"] is None
                                          for r in judge.last_raw]


def test_generative_judge_that_always_picks_slot_a_ties_every_pair(slot_a_model, pool, criterion):
    """Judged in both orders with the texts really swapped, a judge that only ever answers "A"
    wins and loses each comparison once: every verdict is valid and every preference 0.5."""
    judge = GenerativeJudge(criterion, pool, model=slot_a_model, dtype="float32", max_new_tokens=4)
    prompts = PROMPTS[:2]
    cands = _candidates(prompts)
    judgments, verdicts = judge.rank(prompts, cands)
    assert len(verdicts) == 6
    assert all(d["raw_first"] == "A" and d["raw_second"] == "A" for d in judge.verdict_details)
    assert [(v.p_a_first, v.p_a_second) for v in verdicts] == [(1.0, 0.0)] * 6
    assert [(j.score, j.details["invalid_comparisons"]) for j in judgments] == [(0.5, 0)] * 6
    assert judge.best_of(prompts, cands) == {"a": 0, "b": 0}  # every prompt; ties go to the first candidate
    assert judge.prefer(PROMPTS[:2], RESPONSES[:2], RESPONSES[1:3]) == [0.5, 0.5]


def test_generative_render(tiny_model, pool, criterion):
    direct = GenerativeJudge(criterion, pool, model=tiny_model)
    cot = GenerativeJudge(criterion, pool, model=tiny_model, chain_of_thought=True)
    assert direct.max_new_tokens < cot.max_new_tokens
    c1 = direct.render(PROMPTS[0], "ALPHA text", "BETA text")[-1]["content"]
    assert c1.index("[Response A]\nALPHA text") < c1.index("[Response B]\nBETA text")
    assert criterion.get("generative.instruction") in c1 and PROMPTS[0].messages[-1]["content"] in c1
    assert "Do not explain" in c1 and "Verdict: [[A]]" in c1
    assert "First explain your reasoning" in cot.render(PROMPTS[0], "x", "y")[-1]["content"]


# ---- reward model -------------------------------------------------------------------------------

def test_reward_model_scores_equal_a_plain_classifier_forward_pass(reward_model_dir, criterion):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pool = ModelPool()
    judge = RewardModelJudge(criterion, model=reward_model_dir, pool=pool, dtype="float32", batch_size=2)
    assert pool._resolved == {} and judge._model is None  # nothing loaded before first use
    scores = judge.score(PROMPTS, RESPONSES)
    tok = AutoTokenizer.from_pretrained(reward_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir, dtype=torch.float32).eval()
    by_hand = []
    with torch.no_grad():
        for p, r in zip(PROMPTS, RESPONSES, strict=True):
            ids = _ids(tok, [*p.messages, {"role": "assistant", "content": r}], add_generation_prompt=False)
            by_hand.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
    assert max(by_hand) - min(by_hand) > 1e-3
    assert scores == pytest.approx(by_hand, abs=1e-4)  # batched with padding: same numbers
    assert judge.score(PROMPTS, RESPONSES) == pytest.approx(
        RewardModelJudge(criterion, model=reward_model_dir, dtype="float32", batch_size=1).score(PROMPTS, RESPONSES),
        abs=1e-4)
    assert not judge._model.training and not any(q.requires_grad for q in judge._model.parameters())
    assert judge.best_of(PROMPTS[:1], [Candidate("a", i, r, 2, True, "m") for i, r in enumerate(RESPONSES)]) == {
        "a": max(range(3), key=lambda i: judge.score(PROMPTS[:1], [RESPONSES[i]])[0])}


def test_reward_model_needs_one_label(tmp_path, reward_model_dir, criterion):
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    cfg = AutoConfig.from_pretrained(reward_model_dir)
    cfg.num_labels = 2
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path, safe_serialization=True)
    AutoTokenizer.from_pretrained(reward_model_dir).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels=1"):
        RewardModelJudge(criterion, model=str(tmp_path), dtype="float32").score(PROMPTS[:1], RESPONSES[:1])


# ---- rule judges --------------------------------------------------------------------------------

def keyword_reward(prompt_text: str, response: str) -> float | None:
    """A callable judge for the tests: +1 per 'great', -1 per 'bad'; None for an empty response."""
    if not response:
        return None
    words = response.lower().split()
    return float(words.count("great") - words.count("bad")) + 0.01 * len(prompt_text)


def test_length_judge():
    p = [PROMPTS[0]] * 3
    texts = ["one two three", "one two three four five six", ""]
    assert LengthJudge(target=4).score(p, texts) == [-1.0, -2.0, -4.0]
    assert LengthJudge(target=None, prefer="longer").score(p, texts) == [3.0, 6.0, 0.0]
    assert LengthJudge(target=None, prefer="shorter").score(p, texts) == [-3.0, -6.0, -0.0]
    assert LengthJudge(unit="chars", target=None, prefer="longer").score(p, texts) == [13.0, 27.0, 0.0]
    with pytest.raises(ValueError, match="unit"):
        LengthJudge(unit="pages")
    with pytest.raises(ValueError, match="tokens needs"):
        LengthJudge(unit="tokens")


def test_length_judge_in_tokens(tiny_model, pool):
    judge = LengthJudge(unit="tokens", target=None, prefer="longer", model=tiny_model, pool=pool)
    tok = pool.tokenizer(tiny_model)
    assert judge.score(PROMPTS, RESPONSES) == [float(len(tok(r, add_special_tokens=False)["input_ids"]))
                                               for r in RESPONSES]


def test_regex_judge():
    p = [PROMPTS[0]] * 3
    texts = ["I'm sorry, I cannot help", "Sure: here it is", "SORRY"]
    # conf/judge/rule_regex.yaml's defaults are ignore_case: true, invert: true; each case sets both
    assert RegexJudge(pattern=r"\bsorry\b", ignore_case=False, invert=False).score(p, texts) == [1.0, 0.0, 0.0]
    assert RegexJudge(pattern=r"\bsorry\b", ignore_case=True, invert=False).score(p, texts) == [1.0, 0.0, 1.0]
    assert RegexJudge(pattern=r"\bsorry\b", ignore_case=True, invert=True).score(p, texts) == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="not a valid regular expression"):
        RegexJudge(pattern="(unclosed")


def test_callable_judge_and_bad_paths():
    judge = CallableJudge(function=f"{__name__}:keyword_reward")
    texts = ["a great great film", "bad", ""]
    scores = judge.score([PROMPTS[0]] * 3, texts)
    assert scores == [keyword_reward(PROMPTS[0].text, t) for t in texts[:2]] + [None]
    assert judge.prefer([PROMPTS[0]], ["great"], ["bad"]) == [1.0]
    for path, msg in [("no_colon_here", "import path"), ("rlaif_no_such_module_x:f", "cannot import"),
                      (f"{__name__}:no_such_function", "has no attribute"), (f"{__name__}:SCALE", "not a callable"),
                      ("os:system(1)", "has no attribute")]:
        with pytest.raises(ValueError, match=msg):
            CallableJudge(function=path)


# ---- panel --------------------------------------------------------------------------------------

PANEL_A = ["wonderful great film", "superb"]
PANEL_B = ["a terrible awful boring film indeed", "bad"]
# member preferences for a, by hand: VADER prefers the positive text, length(longer) the longer one,
# regex('film') matches both texts of item 0 and neither of item 1
HAND = {"vader": [1.0, 1.0], "length": [0.0, 0.5], "regex": [0.5, 0.5]}


def _members():
    return [VaderJudge(), LengthJudge(target=None, prefer="longer"),
            RegexJudge(pattern="film", ignore_case=False, invert=False)]


def test_panel_aggregations_match_hand_computation():
    p = [PROMPTS[0]] * 2
    v, ln, rx = HAND["vader"], HAND["length"], HAND["regex"]
    mean = PanelJudge(None, _members(), "mean")
    assert mean.prefer(p, PANEL_A, PANEL_B) == pytest.approx([(v[k] + ln[k] + rx[k]) / 3 for k in range(2)])
    assert list(mean.last_member_prefs.values()) == [v, ln, rx]
    assert list(mean.last_member_prefs) == ["rule:vader", "rule:length(words,longer)", "rule:regex"]
    weighted = PanelJudge(None, _members(), "weights", weights=[2, 1, 1])
    assert weighted.prefer(p, PANEL_A, PANEL_B) == pytest.approx([(2 * v[k] + ln[k] + rx[k]) / 4 for k in range(2)])
    # majority: item 0 has one vote each way (regex abstains) -> tie; item 1 only VADER votes -> a
    assert PanelJudge(None, _members(), "majority").prefer(p, PANEL_A, PANEL_B) == [0.5, 1.0]
    assert PanelJudge(None, _members(), "majority", weights=[1, 2, 1]).prefer(p, PANEL_A, PANEL_B) == [0.0, 1.0]
    # swapping a and b gives the complement
    back = mean.prefer(p, PANEL_B, PANEL_A)
    assert [x + y for x, y in zip(back, mean.prefer(p, PANEL_A, PANEL_B), strict=True)] == pytest.approx([1.0, 1.0])


def test_panel_invalid_members_abstain():
    only_none = CallableJudge(function=f"{__name__}:keyword_reward")  # None for the empty response
    panel = PanelJudge(None, [only_none, VaderJudge()], "mean")
    p = [PROMPTS[0]] * 2
    prefs = panel.prefer(p, ["great", ""], ["bad", "nice"])
    assert prefs[0] == pytest.approx(1.0) and prefs[1] == pytest.approx(0.0)  # item 1: VADER alone decides
    assert panel.last_member_prefs[only_none.name] == [1.0, None]
    assert PanelJudge(None, [only_none], "majority").prefer(p[:1], [""], ["x"]) == [None]


def test_panel_from_configs_ranks_and_rewards(criterion):
    members = [{"_target_": "rlaif.judges.VaderJudge"}, {"_target_": "rlaif.judges.VaderJudge"},
               {"_target_": "rlaif.judges.LengthJudge", "target": None, "prefer": "longer"}]
    panel = PanelJudge(criterion, members, "mean")
    assert list(panel.members) == ["rule:vader", "rule:vader#2", "rule:length(words,longer)"]
    prompts = PROMPTS[:2]
    cands = _candidates(prompts, ["great", "a boring dull film", "wonderful"])
    judgments, verdicts = panel.rank(prompts, cands)
    assert len(verdicts) == 6 and all(v.p_a_first == v.p_a_second for v in verdicts)  # pointwise members
    vader, length = VaderJudge(), LengthJudge(target=None, prefer="longer")
    for v, d in zip(verdicts, panel.verdict_details, strict=True):
        a = next(c.text for c in cands if (c.prompt_id, c.index) == (v.prompt_id, v.a))
        b = next(c.text for c in cands if (c.prompt_id, c.index) == (v.prompt_id, v.b))
        pv = vader.prefer(prompts[:1], [a], [b])[0]
        pl = length.prefer(prompts[:1], [a], [b])[0]
        assert d["members"] == {"rule:vader": pv, "rule:vader#2": pv, "rule:length(words,longer)": pl}
        assert v.p_a == pytest.approx((2 * pv + pl) / 3)
    for j in judgments:
        assert set(j.details["members"]) == set(panel.members)
    # "great (x)" beats "wonderful (x)" on VADER (0.62 > 0.57) and ties on length; it loses only the
    # length vote against the long negative text: mean win 0.75, the best of its prompt
    assert VaderJudge().score(prompts[:2], ["great (a)", "wonderful (a)"]) == pytest.approx([0.6249, 0.5719], abs=1e-4)
    assert [j.score for j in judgments[:3]] == pytest.approx([(2 / 3 + 5 / 6) / 2, (1 / 3 + 1 / 3) / 2, (1 / 6 + 2 / 3) / 2])
    assert panel.best_of(prompts, cands) == {"a": 0, "b": 0}
    rewards = panel(prompts=["Continue: The film"] * 2, completions=["great", "awful"], reference=["awful", "great"])
    assert rewards == pytest.approx([(1 + 1 + 0.5) / 3, (0 + 0 + 0.5) / 3])  # one word each: length ties


def test_panel_with_a_comparative_member_aggregates_each_order(sharp_model, pool, criterion):
    from rlaif.judges import PairwiseJudge

    pairwise = PairwiseJudge(criterion, pool, model=sharp_model, dtype="float32")
    a, b = ["a wonderful film", "dull"], ["a dull film", "superb"]
    own = pairwise.compare(PROMPTS[:2], a, b)
    vader = VaderJudge().prefer(PROMPTS[:2], a, b)
    assert vader == [1.0, 0.0]
    panel = PanelJudge(criterion, [pairwise, VaderJudge()], "mean")
    got = panel.compare(PROMPTS[:2], a, b)
    want = [((f + v) / 2, (s + v) / 2) for (f, s), v in zip(own, vader, strict=True)]
    assert len(got) == len(want) == 2
    for pair, expected in zip(got, want, strict=True):  # pytest.approx compares flat sequences only
        assert pair == pytest.approx(expected, abs=1e-6)
    assert len(panel.last_member_results[pairwise.name]) == len(own)
    for pair, expected in zip(panel.last_member_results[pairwise.name], own, strict=True):
        assert pair == pytest.approx(expected, abs=1e-6)
    assert panel.last_member_prefs[pairwise.name] == pytest.approx([(f + s) / 2 for f, s in own], abs=1e-6)
    weighted = PanelJudge(criterion, [pairwise, VaderJudge()], "majority", weights=[2, 1])
    votes = weighted.compare(PROMPTS[:2], a, b)  # the pairwise member outvotes VADER in each order
    assert votes == [tuple(1.0 if x > 0.5 else 0.0 if x < 0.5 else 0.5 for x in pair) for pair in own]


def test_panel_rejects_bad_settings():
    with pytest.raises(ValueError, match="aggregation"):
        PanelJudge(None, _members(), "median")
    with pytest.raises(ValueError, match="one per member"):
        PanelJudge(None, _members(), "weights", weights=[1, 2])
    with pytest.raises(ValueError, match="needs judge.weights"):
        PanelJudge(None, _members(), "weights")
    with pytest.raises(ValueError, match="_target_"):
        PanelJudge(None, [{"kind": "rule"}])


# ---- constitution and few-shot ------------------------------------------------------------------

def test_constitution_principle_is_seeded_recorded_and_varies(tiny_model, pool):
    crit = load_criterion("constitution")
    assert len(crit.principles) >= 8
    judge = GenerativeJudge(crit, pool, model=tiny_model, dtype="float32", max_new_tokens=2, seed=0)
    again = GenerativeJudge(crit, pool, model=tiny_model, dtype="float32", max_new_tokens=2, seed=0)
    other = GenerativeJudge(crit, pool, model=tiny_model, dtype="float32", max_new_tokens=2, seed=1)
    pairs = [(f"response {i}", f"other {i}") for i in range(24)]
    chosen = [judge.principle(PROMPTS[0], a, b) for a, b in pairs]
    assert chosen == [again.principle(PROMPTS[0], a, b) for a, b in pairs]  # same seed, same principle
    assert chosen == [judge.principle(PROMPTS[0], b, a) for a, b in pairs]  # both orders share it
    assert len(set(chosen)) >= 4 and set(chosen) <= set(crit.principles)  # varies across pairs
    assert chosen != [other.principle(PROMPTS[0], a, b) for a, b in pairs]  # the seed matters
    # recorded on every comparison, and shown to the judge in both orders
    cands = _candidates(PROMPTS[:1])
    _, verdicts = judge.rank(PROMPTS[:1], cands)
    for v, d in zip(verdicts, judge.verdict_details, strict=True):
        a, b = cands[v.a].text, cands[v.b].text
        assert d["principle"] == judge.principle(PROMPTS[0], a, b)
        assert d["principle"] in judge.render(PROMPTS[0], a, b, d["principle"])[-1]["content"]
    # pointwise: one principle per prompt, recorded on the judgment
    pw = PointwiseJudge(crit, pool, model=tiny_model, dtype="float32")
    judgments, _ = pw.rank(PROMPTS, _candidates(PROMPTS))
    for j in judgments:
        p = next(x for x in PROMPTS if x.id == j.prompt_id)
        assert j.details["principle"] == pw.principle(p) in pw.render(p, "x")[-1]["content"]


def test_principle_choice_is_the_same_in_another_process():
    crit = load_criterion("constitution")
    code = ("from rlaif.criteria import load_criterion; c = load_criterion('constitution'); "
            "print('\\n'.join(c.principle_for(0, 'task', str(i), 'x') for i in range(10)))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip().split("\n") == [crit.principle_for(0, "task", str(i), "x") for i in range(10)]


def test_few_shot_examples_are_prepended(tiny_model, pool):
    crit = load_criterion("concise")
    assert crit.few_shot
    for judge in (PointwiseJudge(crit, pool, model=tiny_model), GenerativeJudge(crit, pool, model=tiny_model)):
        content = (judge.render(PROMPTS[0], "x") if judge.pointwise else judge.render(PROMPTS[0], "x", "y"))[-1]["content"]
        ex = crit.few_shot[0]
        assert ex["chosen"] in content and ex["rejected"] in content
        assert content.index(ex["rejected"]) < content.index("Continue this movie review")
    bare = PointwiseJudge(crit, pool, model=tiny_model, few_shot=False)
    assert crit.few_shot[0]["chosen"] not in bare.render(PROMPTS[0], "x")[-1]["content"]


# ---- criteria -----------------------------------------------------------------------------------

CRITERIA = group_options("criteria")


def test_required_criteria_and_kinds_exist():
    assert set(CRITERIA) >= {"helpfulness", "harmlessness", "honesty", "hhh", "positive_sentiment", "concise",
                             "constitution"}
    assert set(required_wording()) >= {"contrastive", "pairwise", "pointwise", "generative", "reward_model", "rule",
                                     "panel"}
    assert set(group_options("judge")) <= set(required_wording())


@pytest.mark.parametrize("name", CRITERIA)
def test_every_criterion_has_wording_for_every_kind_it_claims(name, tiny_model, pool):
    crit = load_criterion(name)
    assert crit.name == name and crit.description
    assert set(crit.claimed_kinds()) == set(worded_kinds())  # every criterion serves every prompt-based kind
    for kind in crit.claimed_kinds():
        assert crit.missing_for(kind) == [], (name, kind)
    for cls in (PointwiseJudge, GenerativeJudge):
        cls(crit, pool, model=tiny_model)  # constructing checks the wording too
    _ = crit.principles, crit.few_shot_text()  # well-formed when present


def test_wording_problems_look_inside_panels_and_multi_criterion_judges():
    bare = Criterion("bare", "no wording")
    panel = {"kind": "panel", "members": [{"_target_": "rlaif.judges.VaderJudge"},
                                          {"_target_": "rlaif.judges.PointwiseJudge"}]}
    problems = wording_problems(panel, bare)
    assert len(problems) == 1 and "judge.members[1]" in problems[0] and "criteria.pointwise.question" in problems[0]
    assert wording_problems(panel, load_criterion("honesty")) == []
    multi = {"kind": "multi_criterion", "judge": {"_target_": "rlaif.judges.GenerativeJudge"},
             "criteria": [{"name": "helpfulness"}, {"name": "bare", "description": "inline, no wording", "weight": 1}]}
    problems = wording_problems(multi, load_criterion("helpfulness"))
    assert len(problems) == 1 and "'bare'" in problems[0] and "generative.instruction" in problems[0]
    assert "unknown criteria 'nope'" in wording_problems({**multi, "criteria": [{"name": "nope"}]}, bare)[0]
    assert "cannot import" in wording_problems({"_target_": "rlaif.judges.NoSuchJudge"}, bare)[0]
    for judge in group_options("judge"):  # every shipped judge config with every shipped criterion
        cfg = compose_config([f"judge={judge}"]).judge
        for name in CRITERIA:
            assert wording_problems(cfg, load_criterion(name)) == [], (judge, name)


# ---- several criteria ---------------------------------------------------------------------------

def test_multi_criterion_scores_per_criterion_and_weighted_aggregate(sharp_model, pool):
    spec = {"_target_": "rlaif.judges.PointwiseJudge", "dtype": "float32"}
    judge = MultiCriterionJudge(None, spec, [{"name": "helpfulness", "weight": 2.0}, {"name": "honesty", "weight": 1.0}],
                                pool=pool, model=sharp_model)
    scores = judge.score(PROMPTS, RESPONSES)
    help_ = PointwiseJudge(load_criterion("helpfulness"), pool, model=sharp_model, dtype="float32").score(PROMPTS, RESPONSES)
    hon = PointwiseJudge(load_criterion("honesty"), pool, model=sharp_model, dtype="float32").score(PROMPTS, RESPONSES)
    assert help_ != pytest.approx(hon, abs=1e-6)  # the criteria really differ for the judge
    assert scores == pytest.approx([(2 * h + o) / 3 for h, o in zip(help_, hon, strict=True)], abs=1e-6)
    judgments, _ = judge.rank(PROMPTS[:1], _candidates(PROMPTS[:1]))
    for j in judgments:
        per = j.details["per_criterion"]
        assert set(per) == {"helpfulness", "honesty"}
        assert j.score == pytest.approx((2 * per["helpfulness"] + per["honesty"]) / 3)
    assert judge.criterion.name == "helpfulness+honesty"


def test_multi_criterion_rank_puts_per_criterion_values_on_their_candidates(sharp_model, pool):
    spec = {"_target_": "rlaif.judges.PointwiseJudge", "dtype": "float32"}
    judge = MultiCriterionJudge(None, spec, [{"name": "helpfulness", "weight": 2.0}, {"name": "honesty", "weight": 1.0}],
                                pool=pool, model=sharp_model)
    own = {n: PointwiseJudge(load_criterion(n), pool, model=sharp_model, dtype="float32")
           for n in ("helpfulness", "honesty")}
    texts = ["dull", "a wonderful film", "dull", "superb acting", "a wonderful film"]
    cands = _texts_cands(PROMPTS[0], texts)
    judge.rank(PROMPTS[:1], cands[3:4])  # one item memoised before the call
    for _ in range(2):  # the second call finds every item memoised
        judgments, _ = judge.rank(PROMPTS[:1], cands)
        for j, t in zip(judgments, texts, strict=True):
            per = j.details["per_criterion"]
            for n, member in own.items():
                assert per[n] == pytest.approx(member.score(PROMPTS[:1], [t])[0], abs=1e-6)
            assert j.score == pytest.approx((2 * per["helpfulness"] + per["honesty"]) / 3)
    assert judgments[0].details["per_criterion"] != judgments[1].details["per_criterion"]


# ---- every configured judge, all four uses --------------------------------------------------------

@pytest.mark.parametrize("option", group_options("judge"))
def test_every_configured_judge_serves_all_four_uses(option, tiny_model, reward_model_dir, slot_a_model):
    overrides = [f"judge={option}", f"policy.model={tiny_model}"]
    if not option.startswith("rule"):
        overrides.append("judge.dtype=float32")  # bfloat16 matmuls are slow on CPU
    if option == "reward_model":
        overrides.append(f"judge.model={reward_model_dir}")
    if option in ("generative",):  # a random tiny model writes no parseable verdict; this one always says "A"
        overrides += ["judge.max_new_tokens=4", f"judge.model={slot_a_model}"]
    cfg = compose_config(overrides)
    validate(cfg)
    pool = ModelPool()
    judge = instantiate(cfg.judge, _partial_=True)(criterion=Criterion.from_config(cfg.criteria), pool=pool)
    assert judge.kind == option
    # what cached verdicts depend on: the resolved model (one, when panel members share it), else the rule
    if option.startswith("rule"):
        assert judge.identity == judge.name
    else:
        model = {"reward_model": reward_model_dir, "generative": slot_a_model}.get(option, tiny_model)
        assert judge.identity == pool.resolve(model).identity
    prompts = PROMPTS[:2]
    cands = _candidates(prompts, CANDIDATE_TEXTS[:2])  # one pair per prompt keeps generative judges quick
    judgments, verdicts = judge.rank(prompts, cands)  # labelling
    assert [(j.prompt_id, j.index) for j in judgments] == [(c.prompt_id, c.index) for c in cands]
    assert bool(verdicts) == (not judge.pointwise)
    assert all(j.valid for j in judgments)
    best = judge.best_of(prompts, cands)  # best-of-n: every prompt, its highest-scored candidate
    assert best == {p.id: max((j for j in judgments if j.prompt_id == p.id), key=lambda j: (j.score, -j.index)).index
                    for p in prompts}
    prefs = judge.prefer(prompts, RESPONSES[:2], RESPONSES[1:3])  # evaluation
    assert len(prefs) == 2 and all(p is not None and 0.0 <= p <= 1.0 for p in prefs)
    chats = [[{"role": "user", "content": p.messages[-1]["content"]}] for p in prompts]  # TRL reward
    completions = [[{"role": "assistant", "content": r}] for r in RESPONSES[:2]]
    kwargs = {} if judge.pointwise else {"reference": RESPONSES[1:3]}
    rewards = judge(prompts=chats, completions=completions, completion_ids=None, **kwargs)
    assert isinstance(rewards, list) and len(rewards) == 2 and all(type(r) is float for r in rewards)
    assert all(math.isfinite(r) for r in rewards)
    if not judge.pointwise:  # P(completion better than the reference)
        assert all(0.0 <= r <= 1.0 for r in rewards)


def test_conf_dir_has_the_new_judges():
    assert {"pointwise", "generative", "reward_model", "panel", "rule_length", "rule_regex"} <= set(
        group_options("judge"))
    assert (conf_dir() / "criteria" / "constitution.yaml").exists()
