"""Judges: who gives the feedback. One small interface (``rlaif.judges.base.Judge``) for every kind."""

from rlaif.judges.base import Judge
from rlaif.judges.contrastive import ContrastiveJudge
from rlaif.judges.pairwise import PairwiseJudge
from rlaif.judges.rule import VaderJudge

__all__ = ["Judge", "ContrastiveJudge", "PairwiseJudge", "VaderJudge"]
