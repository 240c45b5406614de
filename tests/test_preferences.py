"""Preference pairs from judgments: modes, invalid scores, margins, ties, TRL format, verdict orientation."""

from __future__ import annotations

import math

import pytest

from rlaif.preferences import build_pairs
from rlaif.types import Candidate, Judgment, PairwiseVerdict, PreferencePair, Prompt


def _prompt(pid: str) -> Prompt:
    return Prompt(pid, f"text {pid}", [{"role": "system", "content": "sys"}, {"role": "user", "content": f"do {pid}"}],
                  "train", f"f.jsonl:{pid}")


def _setup(scores: dict[str, list[float | None]]):
    prompts = [_prompt(pid) for pid in scores]
    cands = [Candidate(pid, i, f"{pid}-answer-{i}", 3, True, "m") for pid, ss in scores.items() for i in range(len(ss))]
    judgments = [Judgment(pid, i, s, "judge-x", "crit-y") for pid, ss in scores.items() for i, s in enumerate(ss)]
    return prompts, cands, judgments


def test_best_vs_worst_picks_max_and_min_per_prompt():
    prompts, cands, js = _setup({"p": [0.1, 0.9, -0.5, 0.3], "q": [2.0, 1.0, 3.0]})
    pairs, stats = build_pairs(prompts, cands, js, mode="best_vs_worst")
    got = {p.prompt_id: (p.chosen_index, p.rejected_index) for p in pairs}
    assert got == {"p": (1, 2), "q": (2, 1)}
    assert len(pairs) == 2 and stats["pairs"] == 2
    p = next(x for x in pairs if x.prompt_id == "p")
    assert p.chosen_score == pytest.approx(0.9) and p.rejected_score == pytest.approx(-0.5)
    assert p.margin == pytest.approx(1.4)
    assert stats["mean_margin"] == pytest.approx((1.4 + 2.0) / 2)


def test_all_pairs_gives_k_choose_2_pairs_ordered_by_score():
    k = 5
    prompts, cands, js = _setup({"p": [0.5, 0.1, 0.9, 0.3, 0.7]})
    pairs, stats = build_pairs(prompts, cands, js, mode="all_pairs")
    assert len(pairs) == k * (k - 1) // 2 == stats["pairs"]
    assert len({(p.chosen_index, p.rejected_index) for p in pairs}) == len(pairs)
    assert {frozenset((p.chosen_index, p.rejected_index)) for p in pairs} == {
        frozenset((i, j)) for i in range(k) for j in range(i + 1, k)}
    for p in pairs:
        assert p.chosen_score > p.rejected_score
        assert p.margin == pytest.approx(p.chosen_score - p.rejected_score)


@pytest.mark.parametrize("mode", ["best_vs_worst", "all_pairs"])
@pytest.mark.parametrize("bad", [None, float("nan")])
def test_invalid_scores_never_paired_and_counted(mode, bad):
    # The invalid candidate would be the best (NaN compares oddly) or the worst; it must never appear.
    prompts, cands, js = _setup({"p": [0.2, bad, 0.8, 0.5], "q": [bad, 1.0], "r": [bad, bad, 0.4]})
    pairs, stats = build_pairs(prompts, cands, js, mode=mode)
    used = {(p.prompt_id, i) for p in pairs for i in (p.chosen_index, p.rejected_index)}
    assert ("p", 1) not in used and ("q", 0) not in used and ("r", 0) not in used and ("r", 1) not in used
    assert stats["invalid_judgments"] == 4
    assert stats["prompts_without_two_valid"] == 2  # q and r have one valid candidate each
    assert {p.prompt_id for p in pairs} == {"p"}
    assert len(pairs) == (1 if mode == "best_vs_worst" else 3)
    for p in pairs:
        assert math.isfinite(p.chosen_score) and math.isfinite(p.rejected_score)


def test_min_margin_drops_pairs_and_counts_them():
    prompts, cands, js = _setup({"p": [0.0, 0.25, 1.0], "q": [0.0, 0.1]})
    pairs, stats = build_pairs(prompts, cands, js, mode="all_pairs", min_margin=0.5)
    assert {(p.prompt_id, p.chosen_index, p.rejected_index) for p in pairs} == {("p", 2, 0), ("p", 2, 1)}
    assert stats["dropped_below_margin"] == 2  # p: 0.25 vs 0.0, q: 0.1 vs 0.0
    assert all(p.margin >= 0.5 for p in pairs)
    pairs0, stats0 = build_pairs(prompts, cands, js, mode="all_pairs", min_margin=0.0)
    assert len(pairs0) == 4 and stats0["dropped_below_margin"] == 0


def test_min_margin_best_vs_worst():
    prompts, cands, js = _setup({"p": [0.0, 0.3], "q": [0.0, 0.9]})
    pairs, stats = build_pairs(prompts, cands, js, min_margin=0.5)
    assert [p.prompt_id for p in pairs] == ["q"]
    assert stats["dropped_below_margin"] == 1


@pytest.mark.parametrize("mode", ["best_vs_worst", "all_pairs"])
def test_ties_are_not_paired(mode):
    prompts, cands, js = _setup({"p": [0.5, 0.5, 0.5], "q": [0.5, 0.5, 0.7]})
    pairs, stats = build_pairs(prompts, cands, js, mode=mode)
    assert all(p.chosen_score != p.rejected_score for p in pairs)
    assert "p" not in {p.prompt_id for p in pairs}
    if mode == "all_pairs":
        assert {(p.chosen_index, p.rejected_index) for p in pairs} == {(2, 0), (2, 1)}
        assert stats["dropped_below_margin"] == 4  # 3 ties in p, 1 in q
    else:
        assert len(pairs) == 1 and pairs[0].chosen_index == 2
        assert stats["dropped_below_margin"] == 1


def test_trl_conversational_format_and_provenance():
    prompts, cands, js = _setup({"p": [0.1, 0.9]})
    pairs, _ = build_pairs(prompts, cands, js)
    (p,) = pairs
    assert isinstance(p, PreferencePair)
    assert p.prompt == prompts[0].messages
    assert isinstance(p.prompt, list) and all(set(m) == {"role", "content"} for m in p.prompt)
    assert p.chosen == [{"role": "assistant", "content": "p-answer-1"}]
    assert p.rejected == [{"role": "assistant", "content": "p-answer-0"}]
    assert (p.prompt_id, p.chosen_index, p.rejected_index) == ("p", 1, 0)
    assert (p.judge, p.criterion) == ("judge-x", "crit-y")
    assert p.p_chosen_first is None and p.p_chosen_second is None  # no verdicts given
    row = p.to_dict()
    for key in ("prompt", "chosen", "rejected", "prompt_id", "chosen_index", "rejected_index", "chosen_score",
                "rejected_score", "margin", "judge", "criterion", "p_chosen_first", "p_chosen_second"):
        assert key in row


def test_prompt_order_follows_candidates():
    prompts, cands, js = _setup({"b": [0.0, 1.0], "a": [1.0, 0.0]})
    pairs, _ = build_pairs(prompts, cands, js)
    assert [p.prompt_id for p in pairs] == ["b", "a"]


def test_verdict_probabilities_oriented_to_chosen():
    # candidate 1 beats 0 (chosen is verdict's b for verdict (0, 1)); candidate 2 beats 1 (chosen is verdict's a).
    prompts, cands, js = _setup({"p": [0.2, 0.6, 0.9]})
    verdicts = [
        PairwiseVerdict("p", 0, 1, 0.3, 0.1, "j", "c"),
        PairwiseVerdict("p", 1, 2, 0.25, 0.05, "j", "c"),
        PairwiseVerdict("p", 0, 2, None, 0.4, "j", "c"),
    ]
    pairs, _ = build_pairs(prompts, cands, js, verdicts, mode="all_pairs")
    by = {(p.chosen_index, p.rejected_index): p for p in pairs}
    assert set(by) == {(1, 0), (2, 1), (2, 0)}
    # chosen 1 is verdict (0,1)'s b. b sits in the first slot when a sits in the second:
    # P(b better | b first) = 1 - P(a better | a second), P(b better | b second) = 1 - P(a better | a first).
    assert by[(1, 0)].p_chosen_first == pytest.approx(0.9)
    assert by[(1, 0)].p_chosen_second == pytest.approx(0.7)
    # chosen 2 is verdict (1,2)'s b
    assert by[(2, 1)].p_chosen_first == pytest.approx(0.95)
    assert by[(2, 1)].p_chosen_second == pytest.approx(0.75)
    # a missing probability stays missing, in the order it belongs to
    assert by[(2, 0)].p_chosen_first == pytest.approx(0.6)
    assert by[(2, 0)].p_chosen_second is None


def test_chosen_b_probabilities_match_the_judge_seeing_b_first():
    """The orientation is the one a judge gives when asked about the pair the other way round:
    comparing (b, a) puts b in the first slot, so its p_a_first is the chosen-first probability."""
    prompts, cands, js = _setup({"p": [0.2, 0.9]})
    forward = PairwiseVerdict("p", 0, 1, 0.4, 0.1, "j", "c")  # a = 0 in slot 1: 0.4; a in slot 2: 0.1
    backward = PairwiseVerdict("p", 1, 0, 1 - forward.p_a_second, 1 - forward.p_a_first, "j", "c")
    (from_forward,), _ = build_pairs(prompts, cands, js, [forward])
    (from_backward,), _ = build_pairs(prompts, cands, js, [backward])
    assert (from_forward.chosen_index, from_backward.chosen_index) == (1, 1)
    assert from_forward.p_chosen_first == pytest.approx(from_backward.p_chosen_first) == pytest.approx(0.9)
    assert from_forward.p_chosen_second == pytest.approx(from_backward.p_chosen_second) == pytest.approx(0.6)


def test_verdict_probabilities_kept_when_chosen_is_a():
    prompts, cands, js = _setup({"p": [0.9, 0.2]})
    verdicts = [PairwiseVerdict("p", 0, 1, 0.8, 0.65, "j", "c")]
    (pair,), _ = build_pairs(prompts, cands, js, verdicts)
    assert (pair.chosen_index, pair.rejected_index) == (0, 1)
    assert pair.p_chosen_first == pytest.approx(0.8)
    assert pair.p_chosen_second == pytest.approx(0.65)


def test_verdicts_of_other_prompts_do_not_leak():
    prompts, cands, js = _setup({"p": [0.9, 0.2], "q": [0.9, 0.2]})
    verdicts = [PairwiseVerdict("q", 0, 1, 0.8, 0.7, "j", "c")]
    pairs, _ = build_pairs(prompts, cands, js, verdicts)
    by = {p.prompt_id: p for p in pairs}
    assert by["p"].p_chosen_first is None and by["p"].p_chosen_second is None
    assert by["q"].p_chosen_first == pytest.approx(0.8)


def test_unknown_mode_raises():
    prompts, cands, js = _setup({"p": [0.1, 0.9]})
    with pytest.raises(ValueError, match="bogus"):
        build_pairs(prompts, cands, js, mode="bogus")
