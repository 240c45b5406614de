"""Judges: who gives the feedback. One small interface (``rlaif.judges.base.Judge``) for every kind.

Kinds (``judge.kind`` in conf/judge/*.yaml): contrastive, pairwise, pointwise, generative,
reward_model, rule (VADER), rule_length, rule_regex, rule_callable, panel, multi_criterion.
"""

from rlaif.judges.base import Judge
from rlaif.judges.contrastive import ContrastiveJudge
from rlaif.judges.generative import GenerativeJudge, parse_verdict
from rlaif.judges.pairwise import PairwiseJudge
from rlaif.judges.panel import MultiCriterionJudge, PanelJudge
from rlaif.judges.pointwise import PointwiseJudge
from rlaif.judges.reward_model import RewardModelJudge
from rlaif.judges.rule import CallableJudge, LengthJudge, RegexJudge, VaderJudge

__all__ = [
    "Judge", "ContrastiveJudge", "PairwiseJudge", "PointwiseJudge", "GenerativeJudge", "RewardModelJudge",
    "VaderJudge", "LengthJudge", "RegexJudge", "CallableJudge", "PanelJudge", "MultiCriterionJudge",
    "parse_verdict",
]
