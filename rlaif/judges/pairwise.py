"""Pairwise log-probability judge (Lee et al. 2023, arXiv:2309.00267).

The judge sees the prompt and two responses and is asked which is better; P(first) is the
softmax over the log-probs of the two answer tokens. Every comparison is scored in both orders
with the texts really swapped, and the two are averaged. Small models often pick a slot rather
than a response: the both-order probabilities are kept so diagnostics can show it.

Prompt variants (Lee et al. §3.3, Table 2), as options: ``detailed`` adds the criterion's
description and an explicit rubric to the question ("Detailed" preamble); ``few_shot`` prepends
the criterion's examples when it has them; ``chain_of_thought`` first generates a short rationale
for each ordering (greedy), then reads P("1") vs P("2") after it (the paper's two-step CoT: the
rationale is appended and the answer's probabilities are scored, not parsed).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Any, ClassVar

from pydantic import Field

from rlaif.backends import make_backend
from rlaif.criteria import Criterion
from rlaif.judges.base import Judge, LanguageJudgeOptions, Seed, rank_by_pairs, with_given
from rlaif.options import Count, Fraction
from rlaif.types import Prompt

TEMPLATE = (
    "{few_shot}{question}\n\n"
    "Task given to both assistants:\n{prompt}\n\n"
    "Response 1:\n{first}\n\n"
    "Response 2:\n{second}\n\n"
    "Answer with a single digit, 1 or 2."
)
DETAILED = ("{question}\n\nWhat makes a response better here: {description} Judge only what the two responses "
            "say against this standard; the order in which they are shown and their length do not matter.")
COT_ASK = "Before answering, explain in one or two sentences which response is better and why."
COT_ANSWER = "So, which response is better? Answer with a single digit, 1 or 2."


class PairwiseOptions(LanguageJudgeOptions):
    """``judge=pairwise``: every option, documented with its default in conf/judge/pairwise.yaml."""

    CONF: ClassVar[str] = "judge/pairwise"
    answer_tokens: Annotated[list[str], Field(min_length=2, max_length=2)]
    api: dict[str, Any] | None  # APIBackend's settings; null = a local model
    swap_fraction: Fraction
    parse_fallback: bool
    seed: Seed
    few_shot: bool
    detailed: bool
    chain_of_thought: bool
    cot_max_new_tokens: Count


class PairwiseJudge(Judge):
    """Keyword arguments override the YAML's defaults (``PairwiseOptions``); ``model`` and ``dtype``
    may also come positionally."""

    kind = "pairwise"
    wording = ("pairwise.question",)  # what it reads from the criterion
    pointwise = False
    Options = PairwiseOptions

    def __init__(self, criterion: Criterion, pool=None, model: str | None = None, dtype: str | None = None, *,
                 name: str | None = None, backend=None, **options):
        criterion.require(self.kind)
        super().__init__(criterion, name)
        self.options = o = PairwiseOptions.build(with_given(options, model=model, dtype=dtype), "judge")
        self.backend = make_backend(pool, o.model, o.dtype, o.batch_size, o.api, backend, o.engine)
        self.question = criterion.get("pairwise.question")
        self.answer_tokens = tuple(o.answer_tokens)
        self.swap_fraction, self.parse_fallback, self.seed = o.swap_fraction, o.parse_fallback, o.seed
        if o.detailed:
            self.question = DETAILED.format(question=self.question, description=criterion.description or "")
        self.few_shot = criterion.few_shot_text() if o.few_shot else ""
        self.chain_of_thought, self.cot_max_new_tokens = o.chain_of_thought, o.cot_max_new_tokens
        self.last_swapped: list[bool] = []
        self.last_details: list[dict] = []

    @property
    def name(self) -> str:
        return self._name or f"pairwise:{self.backend.name}"

    def principle(self, prompt: Prompt, x: str, y: str) -> str | None:
        """A constitution's principle for this comparison: seeded, and the same in both orders."""
        lo, hi = sorted((x, y))
        task = prompt.messages[-1]["content"] if prompt.messages else prompt.text
        return self.criterion.principle_for(self.seed, task, lo, hi)

    def render(self, prompt: Prompt, first: str, second: str) -> list[dict[str, str]]:
        """The judge's chat for one ordering (exposed so tests can check the swap)."""
        task = prompt.messages[-1]["content"] if prompt.messages else prompt.text
        question = self.principle(prompt, first, second) or self.question
        content = TEMPLATE.format(few_shot=self.few_shot, question=question, prompt=task, first=first, second=second)
        if self.chain_of_thought:
            content = content.rsplit("\n\n", 1)[0] + "\n\n" + COT_ASK
        return [{"role": "user", "content": content}]

    def _with_rationales(self, chats: list[list[dict]]) -> tuple[list[list[dict]], list[str | None]]:
        """Chain of thought: each chat's greedy rationale, then the question asked again after it."""
        rationales = self.backend.generate(chats, max_new_tokens=self.cot_max_new_tokens, temperature=0.0)
        return [c + [{"role": "assistant", "content": r or ""}, {"role": "user", "content": COT_ANSWER}]
                for c, r in zip(chats, rationales, strict=True)], rationales

    def _judge_swapped(self, prompt: Prompt, x: str, y: str) -> bool:
        """Whether this pair is judged in both orders: all pairs, or a seeded, stable fraction."""
        if self.swap_fraction >= 1.0:
            return True
        key = json.dumps([self.seed, prompt.messages, sorted([x, y])], sort_keys=True).encode()
        return int(hashlib.sha256(key).hexdigest()[:8], 16) / 0xFFFFFFFF < self.swap_fraction

    def compare(self, prompts: list[Prompt], a: list[str], b: list[str]):
        chats, where = [], []  # where[k] = (index of the a-first chat, index of the a-second chat or None)
        self.last_swapped = [self._judge_swapped(p, x, y) for p, x, y in zip(prompts, a, b, strict=True)]
        for p, x, y, both in zip(prompts, a, b, self.last_swapped, strict=True):
            chats.append(self.render(p, x, y))  # a in slot 1
            i = len(chats) - 1
            if both:
                chats.append(self.render(p, y, x))  # a in slot 2 (texts swapped)
            where.append((i, len(chats) - 1 if both else None))
        rationales: list[str | None] = []
        if self.chain_of_thought:
            chats, rationales = self._with_rationales(chats)
        logps = self.backend.next_token_logprobs(chats, list(self.answer_tokens))
        raw: dict[int, str | None] = {}
        missing = [i for i, lp in enumerate(logps) if all(x is None for x in lp)]
        if missing and self.parse_fallback:
            # The server gave no log-probs for the answer tokens: ask for the answer as text instead.
            texts = self.backend.generate([chats[i] for i in missing], max_new_tokens=8, temperature=0.0)
            for i, text in zip(missing, texts, strict=True):
                raw[i] = text
                choice = _parse_choice(text, self.answer_tokens)
                if choice is not None:
                    logps[i] = [0.0, -1e9] if choice == 0 else [-1e9, 0.0]
        out, self.last_details = [], []
        for i, j in where:
            first = _softmax_first(logps[i])
            second = _softmax_first(logps[j]) if j is not None else None
            out.append((first, None if second is None else 1.0 - second))
            det = {f"raw_{n}": raw[k] for n, k in (("first", i), ("second", j)) if k is not None and k in raw}
            if rationales:
                det.update({f"rationale_{n}": rationales[k] for n, k in (("first", i), ("second", j)) if k is not None})
            self.last_details.append(det)
        for det, p, x, y in zip(self.last_details, prompts, a, b, strict=True):
            principle = self.principle(p, x, y)
            if principle:
                det["principle"] = principle
        return out

    def rank(self, prompts, candidates):
        return rank_by_pairs(self, prompts, candidates)


def _parse_choice(text: str | None, options: tuple[str, str]) -> int | None:
    """Index of the answer option a generated reply starts with (after spaces and a few symbols);
    None when it names neither or both -- never a default."""
    if not text:
        return None
    head = text.strip().lstrip("*([\"' ").lower()
    for prefix in ("response ", "answer: ", "answer ", "slot "):
        if head.startswith(prefix):
            head = head[len(prefix):]
    hits = [k for k, o in enumerate(options)
            if head.startswith(o.lower()) and (len(head) == len(o) or not head[len(o)].isalnum())]
    return hits[0] if len(hits) == 1 else None


def _softmax_first(logps: list[float | None]) -> float | None:
    if len(logps) != 2 or not all(x is not None and math.isfinite(x) for x in logps):
        return None
    m = max(logps)
    e0, e1 = math.exp(logps[0] - m), math.exp(logps[1] - m)
    return e0 / (e0 + e1)
