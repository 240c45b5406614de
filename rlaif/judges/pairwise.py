"""Pairwise log-probability judge (Lee et al. 2023, arXiv:2309.00267).

The judge sees the prompt and two responses and is asked which is better; P(first) is the
softmax over the log-probs of the two answer tokens. Every comparison is scored in both orders
with the texts really swapped, and the two are averaged. Small models often pick a slot rather
than a response: the both-order probabilities are kept so diagnostics can show it.
"""

from __future__ import annotations

import math

from rlaif.backends import make_backend
from rlaif.criteria import Criterion
from rlaif.judges.base import Judge, rank_by_pairs
from rlaif.types import Prompt

TEMPLATE = (
    "{question}\n\n"
    "Task given to both assistants:\n{prompt}\n\n"
    "Response 1:\n{first}\n\n"
    "Response 2:\n{second}\n\n"
    "Answer with a single digit, 1 or 2."
)


class PairwiseJudge(Judge):
    kind = "pairwise"
    pointwise = False

    def __init__(self, criterion: Criterion, pool=None, model: str | None = None, dtype: str = "bfloat16",
                 batch_size: int = 8, answer_tokens: tuple[str, str] = ("1", "2"), name: str | None = None,
                 backend=None, api: dict | None = None, **_unused):
        criterion.require(self.kind)
        super().__init__(criterion, name)
        self.backend = make_backend(pool, model, dtype, batch_size, api, backend)
        self.question = criterion.get("pairwise.question")
        self.answer_tokens = tuple(answer_tokens)

    @property
    def name(self) -> str:
        return self._name or f"pairwise:{self.backend.name}"

    def render(self, prompt: Prompt, first: str, second: str) -> list[dict[str, str]]:
        """The judge's chat for one ordering (exposed so tests can check the swap)."""
        task = prompt.messages[-1]["content"] if prompt.messages else prompt.text
        content = TEMPLATE.format(question=self.question, prompt=task, first=first, second=second)
        return [{"role": "user", "content": content}]

    def compare(self, prompts: list[Prompt], a: list[str], b: list[str]):
        chats = []
        for p, x, y in zip(prompts, a, b, strict=True):
            chats.append(self.render(p, x, y))  # a in slot 1
            chats.append(self.render(p, y, x))  # a in slot 2 (texts swapped)
        logps = self.backend.next_token_logprobs(chats, list(self.answer_tokens))
        out = []
        for k in range(len(a)):
            first = _softmax_first(logps[2 * k])
            second = _softmax_first(logps[2 * k + 1])
            out.append((first, None if second is None else 1.0 - second))
        return out

    def rank(self, prompts, candidates):
        return rank_by_pairs(self, prompts, candidates)


def _softmax_first(logps: list[float | None]) -> float | None:
    if len(logps) != 2 or not all(x is not None and math.isfinite(x) for x in logps):
        return None
    m = max(logps)
    e0, e1 = math.exp(logps[0] - m), math.exp(logps[1] - m)
    return e0 / (e0 + e1)
