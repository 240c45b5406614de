"""judge=length_biased: another judge's score plus a set length bonus, visible in the diagnostics."""

from __future__ import annotations

import pytest
from conftest import compose_config

from rlaif.config import ConfigError, validate
from rlaif.criteria import load_criterion
from rlaif.diagnostics import compute_diagnostics
from rlaif.judges.length_biased import LengthBiasedJudge
from rlaif.types import Candidate, Prompt

PROMPT = Prompt("p", "x", [{"role": "user", "content": "Review the film."}], "train")
SHORT, LONG = "A great film.", "A great film, and it goes on and on about how great it is for a long while."


def judge(**options) -> LengthBiasedJudge:
    return LengthBiasedJudge(load_criterion("positive_sentiment"), **options)


def test_the_bonus_is_added_per_word_to_the_inner_score():
    vader = {"_target_": "rlaif.judges.VaderJudge"}
    plain, biased = judge(judge=vader, bonus=0.0), judge(judge=vader, bonus=0.1)
    (s0, l0), (s1, l1) = plain.scores([PROMPT] * 2, [SHORT, LONG]), biased.scores([PROMPT] * 2, [SHORT, LONG])
    assert s1 - s0 == pytest.approx(0.1 * len(SHORT.split())) and l1 - l0 == pytest.approx(0.1 * len(LONG.split()))
    _, details = biased.scored([PROMPT], [LONG])
    assert details[0]["unbiased_score"] == pytest.approx(l0) and details[0]["length_bias"] == pytest.approx(l1 - l0)


def test_an_unscorable_item_stays_unscored():
    silent = {"_target_": "rlaif.judges.CallableJudge", "function": "test_length_biased:no_score"}
    assert judge(judge=silent, bonus=1.0).scores([PROMPT], [LONG]) == [None]


def no_score(prompt: str, response: str):
    return None


def test_a_large_bonus_shows_up_as_a_preference_for_longer_responses():
    cands = [Candidate("p", i, t, len(t.split()), True, "m") for i, t in enumerate([SHORT, LONG, SHORT + " Yes."])]

    def p_longer(bonus):
        j = judge(judge={"_target_": "rlaif.judges.VaderJudge"}, bonus=bonus)
        judgments, verdicts = j.rank([PROMPT], cands)
        return compute_diagnostics([PROMPT], cands, judgments, verdicts)["judge/p_prefer_longer"]

    assert p_longer(1.0) == 1.0 and p_longer(-1.0) == 0.0


def test_a_comparative_inner_judge_is_refused_before_any_model_loads():
    with pytest.raises(ValueError, match="judge.judge: .*only compare pairs"):
        judge(judge={"_target_": "rlaif.judges.PairwiseJudge"}, model="not-loaded")


def test_config_is_checked_by_the_options_model():
    validate(compose_config(["judge=length_biased"]))
    with pytest.raises(ConfigError, match=r"judge\.unit: 'pages' is not one of 'words' or 'chars'"):
        validate(compose_config(["judge=length_biased", "judge.unit=pages"]))
