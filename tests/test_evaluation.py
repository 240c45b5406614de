"""evaluate(): pairing, ties, invalid verdicts, LC win rate on hand-built samples; the KL estimate
against the exact KL of a tiny model, enumerated over every response it can produce."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from rlaif.evaluation import KLModels, Scorers, evaluate
from rlaif.generators import HFGenerator
from rlaif.generators.hf import SampleTag
from rlaif.judges.rule import CallableJudge
from rlaif.optimizers import ppo_math as pm
from rlaif.scoring import chat_prefix_ids, left_pad
from rlaif.types import Candidate, Prompt

PROMPTS = [Prompt(f"p{i}", f"item {i}", [{"role": "user", "content": f"Continue this movie review: the film {i}"}],
                  "eval") for i in range(3)]


def number(_prompt: str, response: str) -> float | None:
    """The judge and gold of the hand-built tests: the number a response spells, None when it is not one."""
    try:
        return float(response)
    except ValueError:
        return None


def negated(prompt: str, response: str) -> float | None:
    v = number(prompt, response)
    return None if v is None else -v


def cand(pid: str, index: int, text: str, tokens: int = 5, source: str = "policy") -> Candidate:
    return Candidate(pid, index, text, tokens, True, "hand-built", source)


def run(policy, reference, judge=None, heldout=None, analytic_kl=0.25):
    scorers = Scorers(judge or CallableJudge(function=number), CallableJudge(function=number), heldout)
    return evaluate(PROMPTS, policy, reference, scorers, KLModels(None, None, None, analytic=analytic_kl))


# ------------------------------------------------------------------ evaluate() on hand-built inputs
def test_samples_are_paired_by_prompt_and_index_with_ties_and_invalid_verdicts_counted():
    policy = [cand("p0", 0, "5"), cand("p0", 1, "6"), cand("p1", 0, "3"), cand("p1", 1, "x"),
              cand("p1", 2, "9")]  # p1/2 has no reference sample
    reference = [cand("p2", 0, "0", source="reference"),  # no policy sample
                 cand("p1", 1, "1", source="reference"), cand("p1", 0, "3", source="reference"),
                 cand("p0", 1, "2", source="reference"), cand("p0", 0, "7", source="reference")]
    samples, m = run(policy, reference)
    # p0/0: 5 < 7 loss; p0/1: 6 > 2 win; p1/0: 3 = 3 tie; p1/1: "x" cannot be scored -> invalid
    assert m["eval/win_rate"] == pytest.approx(0.5)
    assert m["eval/judge_preference"] == pytest.approx(0.5)
    assert m["eval/win_rate_invalid"] == 1
    assert m["eval/pairs"] == 4 and m["eval/unpaired"] == 2
    assert m["eval/samples_per_policy"] == 5
    # gold means cover every sample that has a gold value, paired or not
    assert m["eval/gold_reward_policy"] == pytest.approx((5 + 6 + 3 + 9) / 4)
    assert m["eval/gold_reward_reference"] == pytest.approx((0 + 1 + 3 + 2 + 7) / 5)
    assert m["eval/gold_reward_gain"] == pytest.approx(m["eval/gold_reward_policy"] - m["eval/gold_reward_reference"])
    # the pointwise judge's own scores of both policies, and on the policy's samples
    assert m["eval/judge_score_policy"] == pytest.approx(23 / 4)
    assert [s.judge_score for s in samples if s.source == "policy"] == [5.0, 6.0, 3.0, None, 9.0]
    assert m["eval/kl"] == 0.25 and "analytic" in m["eval/kl_of"]


def test_heldout_judge_sees_the_same_pairs():
    policy = [cand("p0", 0, "5"), cand("p0", 1, "6"), cand("p1", 0, "3")]
    reference = [cand("p0", 0, "7", source="reference"), cand("p0", 1, "2", source="reference"),
                 cand("p1", 0, "1", source="reference")]
    _, m = run(policy, reference, heldout=CallableJudge(function=negated))
    assert m["eval/win_rate"] == pytest.approx(2 / 3)
    assert m["eval/heldout_win_rate"] == pytest.approx(1 / 3)  # the negated judge reverses every verdict
    assert m["eval/heldout_invalid"] == 0


def test_length_controlled_win_rate_removes_a_pure_length_preference():
    """The judge prefers whichever response is longer. The policy is longer in 12 of 16 pairs and
    wins 9 of them; it is shorter in 4 and wins 1. The raw win rate is 10/16, but at equal length
    the fitted logistic model is symmetric: the LC win rate is 1/2 (up to the small L2 penalty)."""
    policy, reference = [], []
    outcomes = [(+4, True)] * 9 + [(+4, False)] * 3 + [(-4, True)] * 1 + [(-4, False)] * 3
    for i, (d, win) in enumerate(outcomes):
        policy.append(cand("p0", i, "1" if win else "0", tokens=10 + d))
        reference.append(cand("p0", i, "0" if win else "1", tokens=10, source="reference"))
    _, m = run(policy, reference)
    assert m["eval/win_rate"] == pytest.approx(10 / 16)
    assert m["eval/lc_win_rate"] == pytest.approx(0.5, abs=0.01)
    assert m["eval/length_coef"] > 0.1  # per token: the judge favours length


def test_no_valid_verdict_gives_no_win_rate():
    policy = [cand("p0", 0, "x"), cand("p0", 1, "y")]
    reference = [cand("p0", 0, "1", source="reference"), cand("p0", 1, "2", source="reference")]
    _, m = run(policy, reference)
    assert m["eval/win_rate_invalid"] == 2
    assert math.isnan(m["eval/win_rate"]) and "eval/lc_win_rate" not in m


# ------------------------------------------------------------------ the KL estimate
@pytest.fixture(scope="module")
def kl_models(tiny_model):
    """(policy, reference, tokenizer): the policy is the tiny model with sharper weights and an EOS
    that is often likely, so that responses ending in EOS are a good share of the samples."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    pol = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with torch.no_grad():
        for w in pol.parameters():
            if w.dim() > 1:
                w.mul_(3.0)
        pol.lm_head.weight = torch.nn.Parameter(pol.lm_head.weight.clone())  # untie: EOS as output only
        pre = chat_prefix_ids(tok, PROMPTS[0].messages)
        h = pol.model(input_ids=torch.tensor([pre + [t] for t in range(0, 390, 7)])).last_hidden_state[:, -2:]
        h = h.reshape(-1, h.shape[-1]).mean(0)
        pol.lm_head.weight[tok.eos_token_id] = 2.0 * h / h.norm() ** 2
    return pol, ref, tok


def _sampling_logp(logits, temperature, top_p, top_k, truncate):
    """log p of transformers' own sampling warpers (the oracle; not the code under test)."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    x = TemperatureLogitsWarper(temperature)(None, logits)
    if truncate and top_k:
        x = TopKLogitsWarper(top_k)(None, x)
    if truncate and top_p < 1:
        x = TopPLogitsWarper(top_p)(None, x)
    return torch.log_softmax(x, dim=-1)


@torch.no_grad()
def exact_kl_two_tokens(pol, ref, tok, prompt, temperature, top_p, top_k) -> float:
    """KL(policy as sampled || reference at T) over every response of at most 2 tokens, where a
    response ends at EOS: sum over first tokens, then over second tokens after each non-EOS one."""
    pre, eos = chat_prefix_ids(tok, prompt.messages), tok.eos_token_id

    def step(seqs):
        ids = torch.tensor(seqs)
        lp = _sampling_logp(pol(input_ids=ids).logits[:, -1].float(), temperature, top_p, top_k, True)
        lr = _sampling_logp(ref(input_ids=ids).logits[:, -1].float(), temperature, top_p, top_k, False)
        p = lp.exp()
        return p, (p * torch.where(p > 0, lp - lr, torch.zeros_like(lp))).sum(-1)

    p1, kl1 = step([pre])
    firsts = [t for t in range(p1.shape[-1]) if p1[0, t] > 0 and t != eos]
    _, kl2 = step([pre + [t] for t in firsts])
    return float(kl1[0] + (p1[0, firsts] * kl2).sum())


SETTINGS = [(1.0, 1.0, 0), (0.7, 0.9, 0), (1.3, 1.0, 30)]


@pytest.mark.parametrize(("temperature", "top_p", "top_k"), SETTINGS)
def test_kl_estimate_converges_to_the_exact_kl(kl_models, temperature, top_p, top_k):
    """400 sampled responses (up to 2 tokens) per prompt: the mean log-ratio lies within 4 standard
    errors of the exact KL of the sampled distribution to the reference at the same temperature."""
    pol, ref, tok = kl_models
    prompts = PROMPTS[:2]
    gen = HFGenerator("tiny", max_new_tokens=2, temperature=temperature, top_p=top_p, top_k=top_k, batch_size=400,
                      dtype="float32")
    policy = gen.generate(pol, tok, prompts, 400, seed=3)
    reference = gen.generate(ref, tok, prompts, 1, seed=4, tag=SampleTag(source="reference"))
    assert 0.02 < statistics.fmean(c.finished for c in policy) < 0.98  # EOS is sampled, and also not
    samples, m = evaluate(prompts, policy, reference, Scorers(CallableJudge(function=number)), KLModels(pol, ref, tok, 256))
    ratios = [s.logp_policy - s.logp_reference for s in samples if s.source == "policy"]
    estimate, sem = statistics.fmean(ratios), statistics.stdev(ratios) / math.sqrt(len(ratios))
    exact = statistics.fmean(exact_kl_two_tokens(pol, ref, tok, p, temperature, top_p, top_k) for p in prompts)
    assert m["eval/kl"] == pytest.approx(estimate)
    assert abs(estimate - exact) < 4 * sem, (estimate, sem, exact)
    assert f"T={temperature:g}" in m["eval/kl_of"] and "sampled token ids" in m["eval/kl_of"]
    assert ("eval/kl_untruncated" in m) == (top_p < 1 or top_k > 0)


@torch.no_grad()
def test_policy_logprob_is_that_of_the_distribution_generate_sampled_from(kl_models):
    """Per response, the policy's log-prob in evaluation equals the sum of log-softmax of the logits
    model.generate saw while sampling it, processed by transformers' own temperature, top-k and
    top-p warpers (the distribution its sampler would draw from)."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    pol, ref, tok = kl_models
    gen = HFGenerator("tiny", max_new_tokens=6, temperature=0.8, top_p=0.85, top_k=40, dtype="float32")
    config = gen.generation_config(tok, [tok.eos_token_id])
    warp = LogitsProcessorList([TemperatureLogitsWarper(0.8), TopKLogitsWarper(40), TopPLogitsWarper(0.85)])
    ids, attn, _ = left_pad([chat_prefix_ids(tok, PROMPTS[0].messages)] * 24, tok.pad_token_id)
    torch.manual_seed(0)
    out = pol.generate(input_ids=ids, attention_mask=attn, generation_config=config, logits_processor=[gen.sampler()],
                       output_logits=True, return_dict_in_generate=True)
    policy, expected = [], []
    for r, row in enumerate(out.sequences[:, ids.shape[1] :].tolist()):
        n = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
        scores = [warp(None, out.logits[t][r : r + 1].float())[0] for t in range(n)]
        assert all(math.isfinite(float(scores[t][row[t]])) for t in range(n))  # every draw inside the nucleus
        expected.append(sum(float(torch.log_softmax(scores[t], -1)[row[t]]) for t in range(n)))
        policy.append(Candidate("p0", r, tok.decode(row[:n], skip_special_tokens=True), n, n < len(row), "tiny",
                                token_ids=row[:n], sampling=gen.distribution()))
    samples, _ = evaluate(PROMPTS[:1], policy, policy, Scorers(CallableJudge(function=number)), KLModels(pol, ref, tok, 8))
    got = [s.logp_policy for s in samples if s.source == "policy"]
    assert got == pytest.approx(expected, abs=1e-4)


@torch.no_grad()
def test_eval_kl_is_ppo_train_kl_on_the_same_tokens(kl_models):
    """Without truncation eval/kl is PPO's train/kl: the sum over response tokens, EOS included, of
    log pi - log pi_ref at the sampling temperature (rlaif/optimizers/ppo_rollout.py and ppo.py, _rollout and
    _iteration), computed here with PPO's tensors and functions."""
    pol, ref, tok = kl_models
    T = 0.8
    gen = HFGenerator("tiny", max_new_tokens=5, temperature=T, top_p=1.0, top_k=0, dtype="float32")
    policy = gen.generate(pol, tok, PROMPTS, 6, seed=1)
    assert any(c.finished for c in policy) and not all(c.finished for c in policy)
    _, m = evaluate(PROMPTS, policy, policy, Scorers(CallableJudge(function=number)), KLModels(pol, ref, tok, 8))

    by_id = {p.id: p for p in PROMPTS}
    q_ids, q_attn, _ = left_pad([chat_prefix_ids(tok, by_id[c.prompt_id].messages) for c in policy], tok.pad_token_id)
    R = max(len(c.token_ids) for c in policy)
    resp = torch.full((len(policy), R), tok.pad_token_id)
    mask = torch.zeros((len(policy), R))
    for i, c in enumerate(policy):
        resp[i, : len(c.token_ids)], mask[i, : len(c.token_ids)] = torch.tensor(c.token_ids), 1.0
    input_ids, attn = torch.cat([q_ids, resp], 1), torch.cat([q_attn, mask.long()], 1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)

    def logprobs(model):
        logits = model(input_ids=input_ids, attention_mask=attn, position_ids=pos).logits[:, -(R + 1) : -1]
        return pm.logprobs_from_logits(logits.float() / T, resp)

    train_kl = float(pm.masked_sum(logprobs(pol) - logprobs(ref), mask, dim=1).mean())
    assert m["eval/kl"] == pytest.approx(train_kl, rel=1e-4, abs=1e-5)
    assert "eval/kl_untruncated" not in m


def test_samples_without_token_ids_are_retokenised_and_said_so(kl_models):
    pol, ref, tok = kl_models
    policy = [Candidate("p0", i, text, 3, True, "api-model") for i, text in enumerate(["the film", "a dull movie"])]
    samples, m = evaluate(PROMPTS[:1], policy, policy, Scorers(CallableJudge(function=number)), KLModels(pol, ref, tok, 8))
    assert m["eval/kl_retokenised"] == 2
    assert "re-tokenised" in m["eval/kl_of"] and "not recorded" in m["eval/kl_of"]
    # scored as text + EOS (it finished) at temperature 1
    from rlaif.scoring import continuation_logprobs

    pre = chat_prefix_ids(tok, PROMPTS[0].messages)
    conts = [tok(c.text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in policy]
    lp = [a - b for (a, _), (b, _) in zip(continuation_logprobs(pol, tok.pad_token_id, [pre] * 2, conts),
                                          continuation_logprobs(ref, tok.pad_token_id, [pre] * 2, conts), strict=True)]
    assert [s.logp_policy - s.logp_reference for s in samples if s.source == "policy"] == pytest.approx(lp, abs=1e-4)
