"""A judge with a length bias added on purpose: another judge's score plus ``bonus`` per unit of
length. For studies of length bias (Singhal et al. 2023, arXiv:2310.03716): train against a judge
whose preference for longer answers is known and set, and see what the length-controlled win
rate and the length diagnostics make of it.

The inner judge must be pointwise (a score per response): the bias is added to that score, so
the ranking, the preferences and the TRL reward all carry it. An item the inner judge cannot
score stays unscored; the bias never turns it into a score.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from hydra.utils import get_class

from rlaif.criteria import Criterion
from rlaif.judges.base import Judge, LanguageJudgeOptions
from rlaif.judges.panel import build_judge
from rlaif.types import Prompt


class LengthBiasedOptions(LanguageJudgeOptions):
    """``judge=length_biased``: every option, documented with its default in conf/judge/length_biased.yaml."""

    CONF: ClassVar[str] = "judge/length_biased"
    judge: dict[str, Any]  # the inner judge's config (_target_ and its options)
    bonus: float  # added to the inner score per unit of length; negative: a bias towards brevity
    unit: Literal["words", "chars"]


class LengthBiasedJudge(Judge):
    kind = "length_biased"
    pointwise = True
    Options = LengthBiasedOptions

    def __init__(self, criterion: Criterion, pool=None, backend=None, name: str | None = None, **options):
        super().__init__(criterion, name)
        self.options = o = LengthBiasedOptions.build(options, "judge")
        inner = get_class(o.judge["_target_"]) if "_target_" in o.judge else None
        if inner is not None and not getattr(inner, "pointwise", True):  # checked before anything loads
            raise ValueError(f"judge.judge: the length bias is added to a score, but {inner.kind} judges only "
                             "compare pairs; use a pointwise kind (pointwise, contrastive, reward_model, rule)")
        self.inner = build_judge(o.judge, criterion, pool, backend,
                                 defaults={"model": o.model, "dtype": o.dtype, "batch_size": o.batch_size, "engine": o.engine})
        self.bonus, self.unit = o.bonus, o.unit

    @property
    def name(self) -> str:
        return self._name or f"length_biased({self.inner.name},{self.bonus:+g}/{self.unit[:-1]})"

    @property
    def identity(self) -> str:
        return self.inner.identity

    def length(self, text: str) -> int:
        return len(text.split()) if self.unit == "words" else len(text)

    def score_details(self, prompts: list[Prompt], responses: list[str]) -> tuple[list[float | None], list[dict]]:
        base, details = self.inner.scored(prompts, responses)
        out, info = [], []
        for s, d, r in zip(base, details, responses, strict=True):
            bias = self.bonus * self.length(r)
            out.append(None if s is None else float(s) + bias)
            info.append({**d, "unbiased_score": s, "length_bias": bias})
        return out, info

    def score(self, prompts: list[Prompt], responses: list[str]) -> list[float | None]:
        return self.score_details(prompts, responses)[0]
