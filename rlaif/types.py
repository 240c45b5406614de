"""Records passed between pipeline stages.

Every stage takes and returns lists of these dataclasses, and every record round-trips through
one JSON line (``to_dict`` / ``from_dict``) so that stage outputs can be cached, written to the
run folder and loaded back with ``datasets.load_dataset("json", ...)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T", bound="Record")


class Record:
    """Mixin: JSON-friendly conversion shared by every record type."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], row: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass
class Prompt(Record):
    """One task input.

    ``text`` is the raw item from the data file (for the sentiment task, a review opening);
    ``messages`` is the chat the policy sees, built from the data config's template.
    """

    id: str
    text: str
    messages: list[dict[str, str]]
    split: str  # "train" or "eval"
    source: str = ""  # "<file>:<line>" the prompt came from


@dataclass
class Candidate(Record):
    """One sampled response to a prompt.

    ``token_ids``: the response exactly as sampled, EOS included when it was produced (the text
    is its decoding, stripped). Evaluation scores these ids for the KL; re-tokenising the text
    would score other tokens. None where the generator returns text only (API servers) and in
    records written before ids were kept.
    ``sampling``: the parameters of the distribution the ids were drawn from (``temperature``,
    ``top_p``, ``top_k``: 0 = off, ``max_new_tokens``); nothing else shaped it (the model's own
    generation defaults are not used). None where the generator does not know them.
    """

    prompt_id: str
    index: int  # 0..k-1 within the prompt
    text: str
    num_tokens: int  # generated tokens, EOS included when it was produced
    finished: bool  # True when the model emitted EOS before max_new_tokens
    model: str  # resolved model identity that produced it (path or hub id)
    source: str = "policy"  # "policy", "reference", or an optimizer name
    token_ids: list[int] | None = None
    sampling: dict[str, Any] | None = None


@dataclass
class Judgment(Record):
    """A judge's verdict on one candidate (pointwise kinds) or its aggregate over comparisons.

    ``score`` is None when the judge could not score the candidate (NaN, unparseable); such
    candidates never enter a preference pair and are counted in the metrics.
    """

    prompt_id: str
    index: int
    score: float | None
    judge: str
    criterion: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.score is not None and math.isfinite(self.score)


@dataclass
class PairwiseVerdict(Record):
    """A pairwise judge's comparison of candidates a and b of one prompt, both orders.

    ``p_a_first``: P(a is better) with a shown in the first slot.
    ``p_a_second``: P(a is better) with a shown in the second slot (texts really swapped).
    ``p_a``: their mean, the order-debiased preference for a.
    ``swapped``: False when the judge was configured to judge only a fraction of pairs in both
    orders (``swap_fraction``) and this pair was judged in the first order only; then ``p_a`` is
    ``p_a_first`` and the pair does not count in position diagnostics.
    ``details``: what the judge recorded (raw verdict texts, the principle used, fallbacks).
    """

    prompt_id: str
    a: int
    b: int
    p_a_first: float | None
    p_a_second: float | None
    judge: str
    criterion: str
    swapped: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def p_a(self) -> float | None:
        if not self.swapped:
            return self.p_a_first
        if self.p_a_first is None or self.p_a_second is None:
            return None
        return 0.5 * (self.p_a_first + self.p_a_second)


@dataclass
class PreferencePair(Record):
    """One training pair in TRL's conversational format plus provenance columns."""

    prompt: list[dict[str, str]]
    chosen: list[dict[str, str]]
    rejected: list[dict[str, str]]
    prompt_id: str
    chosen_index: int
    rejected_index: int
    chosen_score: float
    rejected_score: float
    margin: float  # chosen_score - rejected_score, in the judge's score units
    judge: str
    criterion: str
    # Pairwise judges only: P(chosen better) with chosen shown first / second.
    p_chosen_first: float | None = None
    p_chosen_second: float | None = None


@dataclass
class EvalSample(Record):
    """One held-out response used in evaluation, with its scores."""

    prompt_id: str
    source: str  # "policy" or "reference"
    index: int
    text: str
    num_tokens: int
    gold: float | None  # gold reward (e.g. VADER compound), when the task has a gold labeller
    judge_score: float | None = None
    # Summed log-prob of the response (policy samples) under the distribution it was sampled from:
    # the trained policy at the sampling temperature, with its top-k / top-p truncation ...
    logp_policy: float | None = None
    logp_reference: float | None = None  # ... and under the reference at the same temperature, untruncated
