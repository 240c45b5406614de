"""Rule judges: programmatic criteria. VADER sentiment is the gold labeller of the sentiment task."""

from __future__ import annotations

from rlaif.criteria import Criterion
from rlaif.judges.base import Judge
from rlaif.types import Prompt


class VaderJudge(Judge):
    """VADER compound sentiment of the response alone, in [-1, 1]."""

    kind = "rule"
    pointwise = True

    def __init__(self, criterion: Criterion | None = None, name: str | None = None, **_unused):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        super().__init__(criterion or Criterion("positive_sentiment", "VADER compound sentiment"), name)
        self._analyzer = SentimentIntensityAnalyzer()

    @property
    def name(self) -> str:
        return self._name or "rule:vader"

    def score(self, prompts: list[Prompt], responses: list[str]) -> list[float | None]:
        return [float(self._analyzer.polarity_scores(r)["compound"]) for r in responses]
