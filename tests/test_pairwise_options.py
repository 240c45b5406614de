"""Pairwise judge options: judging only a fraction of pairs in both orders, and falling back to
parsing a generated answer where an API server gives no log-probabilities."""

from __future__ import annotations

from omegaconf import OmegaConf
from test_api import completion, ok, serving

from rlaif.backends.api import APIBackend
from rlaif.config import conf_dir
from rlaif.criteria import Criterion
from rlaif.judges import PairwiseJudge
from rlaif.judges.base import rank_by_pairs
from rlaif.models import ModelPool
from rlaif.types import Candidate, Prompt

CRIT = Criterion.from_config(OmegaConf.load(conf_dir() / "criteria" / "positive_sentiment.yaml"))
PROMPTS = [Prompt(str(i), f"opening {i}", [{"role": "user", "content": f"Continue this movie review: opening {i}"}],
                  "train") for i in range(12)]
A = [f"a lovely film number {i}" for i in range(12)]
B = [f"a dull film number {i}" for i in range(12)]




def test_swap_fraction_judges_a_stable_subset_in_both_orders(tiny_model):
    pool = ModelPool()
    judge = PairwiseJudge(CRIT, pool, model=tiny_model, dtype="float32", swap_fraction=0.5, seed=3)
    res = judge.compare(PROMPTS, A, B)
    swapped = list(judge.last_swapped)
    assert 0 < sum(swapped) < len(swapped)  # some pairs in both orders, some in one
    for (first, second), both in zip(res, swapped, strict=True):
        assert first is not None
        assert (second is not None) == both
    judge.compare(PROMPTS, A, B)
    assert judge.last_swapped == swapped  # the subset is stable across calls (seeded by content)
    prefs = judge.prefer(PROMPTS, A, B)
    for p, (first, second), both in zip(prefs, res, swapped, strict=True):
        assert p == (0.5 * (first + second) if both else first)
    full = PairwiseJudge(CRIT, pool, model=tiny_model, dtype="float32")
    full.compare(PROMPTS, A, B)
    assert all(full.last_swapped)

    cands = [Candidate("0", i, t, 3, True, "m") for i, t in enumerate(["good", "bad", "fine"])]
    _, verdicts = rank_by_pairs(judge, PROMPTS[:1], cands)
    for v in verdicts:
        assert v.p_a == (v.p_a_first if not v.swapped else 0.5 * (v.p_a_first + v.p_a_second))


def test_parse_fallback_when_server_gives_no_logprobs():
    # A real HTTP server that never returns log-probs: one-token requests get "x", answers get "1".
    def respond(body, headers, n):
        return ok(completion("x" if body.get("max_tokens") == 1 else "1"))

    with serving(respond) as server:
        backend = APIBackend(model="m", base_url=server.url, api_key_env=None, max_retries=0)
        judge = PairwiseJudge(CRIT, backend=backend)
        res = judge.compare(PROMPTS[:2], A[:2], B[:2])
        # "1" in both orders: slot 1 each time -> P(a | a first) = 1, P(a | a second) = 0
        assert res == [(1.0, 0.0), (1.0, 0.0)]
        assert judge.last_details[0] == {"raw_first": "1", "raw_second": "1"}
        assert sum(r.get("max_tokens") == 8 for r in server.requests) == 4  # both orders asked as text

    with serving(lambda body, headers, n: ok(completion("x" if body.get("max_tokens") == 1 else "Hard to say."))) as s:
        judge = PairwiseJudge(CRIT, backend=APIBackend(model="m", base_url=s.url, api_key_env=None, max_retries=0))
        (first, second), = judge.compare(PROMPTS[:1], A[:1], B[:1])
        assert first is None and second is None  # unparseable: invalid, never a default slot
        assert judge.last_details[0]["raw_first"] == "Hard to say."
        assert judge.prefer(PROMPTS[:1], A[:1], B[:1]) == [None]

    with serving(lambda body, headers, n: ok(completion("x"))) as s:
        judge = PairwiseJudge(CRIT, backend=APIBackend(model="m", base_url=s.url, api_key_env=None, max_retries=0),
                              parse_fallback=False)
        assert judge.compare(PROMPTS[:1], A[:1], B[:1]) == [(None, None)]
        assert all(r.get("max_tokens") == 1 for r in s.requests)


def test_constitution_principle_is_sampled_per_pair_shared_by_both_orders_and_recorded(tiny_model):
    crit = Criterion.from_config(OmegaConf.load(conf_dir() / "criteria" / "constitution.yaml"))
    judge = PairwiseJudge(crit, ModelPool(), model=tiny_model, dtype="float32", seed=1)
    p = PROMPTS[0]
    ab, ba = judge.render(p, A[0], B[0])[0]["content"], judge.render(p, B[0], A[0])[0]["content"]
    used = [pr for pr in crit.principles if pr in ab]
    assert len(used) == 1 and used[0] in ba  # the same principle in both orders
    seen = {judge.principle(q, x, y) for q, x, y in zip(PROMPTS, A, B, strict=True)}
    assert len(seen) > 1  # different comparisons get different principles
    judge.compare(PROMPTS[:3], A[:3], B[:3])
    assert [d["principle"] for d in judge.last_details] == [judge.principle(q, x, y)
                                                            for q, x, y in zip(PROMPTS[:3], A[:3], B[:3], strict=True)]
    assert PairwiseJudge(crit, ModelPool(), model=tiny_model, seed=2).principle(p, A[0], B[0]) in crit.principles


def test_contrastive_judge_uses_and_records_a_principle_per_prompt(tiny_model):
    from rlaif.judges import ContrastiveJudge

    crit = Criterion.from_config(OmegaConf.load(conf_dir() / "criteria" / "constitution.yaml"))
    judge = ContrastiveJudge(crit, ModelPool(), model=tiny_model, dtype="float32", seed=1)
    pos, neg = judge.instructions(PROMPTS[0])
    principle = judge.principle(PROMPTS[0])
    assert principle in crit.principles and principle in pos and principle in neg and pos != neg
    cands = [Candidate(p.id, i, t, 3, True, "m") for p in PROMPTS[:3] for i, t in enumerate(["good", "bad"])]
    judgments, _ = judge.rank(PROMPTS[:3], cands)
    assert all(j.details["principle"] == judge.principle(PROMPTS[int(j.prompt_id)]) for j in judgments)
    plain = ContrastiveJudge(CRIT, ModelPool(), model=tiny_model, dtype="float32")
    assert plain.instructions(PROMPTS[0]) == (plain.positive, plain.negative)  # no principles: criterion wording
