"""Pointwise (expected-score) judge: direct RLAIF in Lee et al. 2023 (arXiv:2309.00267).

The judge sees one response and is asked for a rating; the score is the expected rating under
the judge's next-token distribution restricted to the rating tokens, Σ r·P(r) with P renormalised
over the ratings, rescaled to [0, 1]. Rating scale: single digits, 1..9 by default. "10" is two
tokens for most tokenizers (and one for some, e.g. Llama 3), so a 1-10 scale would compare a
one-token with a two-token answer; single digits are single tokens everywhere we use, which the
backend checks.

``rating_mass`` (in ``Judgment.details``) is the total probability the judge put on the rating
tokens: a judge that mostly answers something else gives a meaningless expectation, and
``min_rating_mass`` turns such items invalid.

Works with any backend that gives next-token log-probs (local models; API backends through
``top_logprobs``). A rating missing from the backend's answer (e.g. not among an API's top
log-probs) counts as probability 0; when every rating is missing the score is None (invalid),
never a default.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator, model_validator

from rlaif.backends import make_backend
from rlaif.criteria import Criterion
from rlaif.judges.base import Judge, LanguageJudgeOptions, Seed, with_given
from rlaif.types import Prompt

TEMPLATE = (
    "{question}\n\n"
    "{few_shot}{principle}"
    "Task given to the assistant:\n{prompt}\n\n"
    "Response:\n{response}\n\n"
    "Rate the response from {lo} (worst) to {hi} (best). Answer with a single digit."
)


def task_text(prompt: Prompt) -> str:
    """What the policy was asked: the last user turn of its chat (the raw text when there is none)."""
    users = [m["content"] for m in prompt.messages if m.get("role") == "user"]
    return users[-1] if users else prompt.text


def principle_line(principle: str | None) -> str:
    return f"Judge by this principle: {principle}\n\n" if principle else ""


def rating_mass(logps: list[float | None]) -> float:
    """Total probability on the rating tokens (the ones the backend reported)."""
    return sum(math.exp(lp) for lp in logps if lp is not None and math.isfinite(lp))


def expected_rating(logps: list[float | None], ratings: list[int]) -> float | None:
    """Σ r·P(r) over the ratings with P renormalised; None when no rating has a finite log-prob."""
    pairs = [(r, lp) for r, lp in zip(ratings, logps, strict=True) if lp is not None and math.isfinite(lp)]
    if not pairs:
        return None
    m = max(lp for _, lp in pairs)
    w = [(r, math.exp(lp - m)) for r, lp in pairs]
    z = sum(x for _, x in w)
    return sum(r * x for r, x in w) / z


class PointwiseOptions(LanguageJudgeOptions):
    """``judge=pointwise``: every option, documented with its default in conf/judge/pointwise.yaml."""

    CONF: ClassVar[str] = "judge/pointwise"
    min_rating: int
    max_rating: int
    min_rating_mass: Annotated[float, Field(ge=0, lt=1)]
    few_shot: bool
    seed: Seed
    api: dict[str, Any] | None  # APIBackend's settings; null = a local model

    @field_validator("min_rating", "max_rating")
    @classmethod
    def _digit(cls, v):
        if not 0 <= v <= 9:
            raise ValueError(f"{v} is not a single digit: pointwise ratings must be single digits (0 to 9), "
                             "since multi-digit ratings are several tokens")
        return v

    @model_validator(mode="after")
    def _scale(self):
        if self.min_rating >= self.max_rating:
            raise ValueError(f"min_rating ({self.min_rating}) must be < max_rating ({self.max_rating}): the ratings "
                             "are single digits with 0 <= min_rating < max_rating <= 9")
        return self


class PointwiseJudge(Judge):
    """Keyword arguments override the YAML's defaults (``PointwiseOptions``); ``model`` and ``dtype``
    may also come positionally."""

    kind = "pointwise"
    wording = ("pointwise.question",)  # what it reads from the criterion
    pointwise = True
    Options = PointwiseOptions

    def __init__(self, criterion: Criterion, pool=None, model: str | None = None, dtype: str | None = None, *,
                 name: str | None = None, backend=None, **options):
        criterion.require(self.kind)
        super().__init__(criterion, name)
        self.options = o = PointwiseOptions.build(with_given(options, model=model, dtype=dtype), "judge")
        self.backend = make_backend(pool, o.model, o.dtype, o.batch_size, o.api, backend, o.engine)
        self.question = criterion.get("pointwise.question")
        self.ratings = list(range(o.min_rating, o.max_rating + 1))
        self.min_rating_mass = o.min_rating_mass
        self.few_shot = criterion.few_shot_text() if o.few_shot else ""
        self.seed = o.seed
        self.last_details: list[dict] = []  # per response of the last score() call (rank reads the memo)

    @property
    def name(self) -> str:
        return self._name or f"pointwise:{self.backend.name}"

    def principle(self, prompt: Prompt) -> str | None:
        # One principle per prompt, so that every candidate of a prompt is rated under the same one
        # and their scores stay comparable.
        return self.criterion.principle_for(self.seed, task_text(prompt))

    def render(self, prompt: Prompt, response: str) -> list[dict[str, str]]:
        content = TEMPLATE.format(question=self.question, few_shot=self.few_shot,
                                  principle=principle_line(self.principle(prompt)), prompt=task_text(prompt),
                                  response=response, lo=self.ratings[0], hi=self.ratings[-1])
        return [{"role": "user", "content": content}]

    def score(self, prompts: list[Prompt], responses: list[str]) -> list[float | None]:
        return self.score_details(prompts, responses)[0]

    def score_details(self, prompts: list[Prompt], responses: list[str]) -> tuple[list[float | None], list[dict]]:
        chats = [self.render(p, r) for p, r in zip(prompts, responses, strict=True)]
        logps = self.backend.next_token_logprobs(chats, [str(r) for r in self.ratings])
        lo, hi = self.ratings[0], self.ratings[-1]
        out, details = [], []
        for p, lp in zip(prompts, logps, strict=True):
            e, mass = expected_rating(lp, self.ratings), rating_mass(lp)
            if mass < self.min_rating_mass:
                e = None
            out.append(None if e is None else (e - lo) / (hi - lo))
            d = {"expected_rating": e, "rating_mass": mass}
            if self.criterion.principles:
                d["principle"] = self.principle(p)
            details.append(d)
        self.last_details = details
        return out, details
