"""Contrastive (likelihood-ratio) judge.

score(x) = mean log p(x | prompt, positive instruction) - mean log p(x | prompt, negative
instruction), where the instructions come from the criterion. Pointwise, so it has no position
bias by construction; one forward pass per (response, instruction). Related to RLCD
(Yang et al. 2023, arXiv:2307.12950). Needs teacher forcing, so local models only.
"""

from __future__ import annotations

from typing import ClassVar

from rlaif.backends import make_backend
from rlaif.criteria import Criterion
from rlaif.judges.base import Judge, LanguageJudgeOptions, Seed, with_given
from rlaif.types import Prompt


class ContrastiveOptions(LanguageJudgeOptions):
    """``judge=contrastive``: every option, documented with its default in conf/judge/contrastive.yaml."""

    CONF: ClassVar[str] = "judge/contrastive"
    seed: Seed


class ContrastiveJudge(Judge):
    """Keyword arguments override the YAML's defaults (``ContrastiveOptions``); ``model`` and ``dtype``
    may also come positionally. Teacher forcing needs a local model, so there is no ``api`` option."""

    kind = "contrastive"
    wording = ("contrastive.positive", "contrastive.negative")  # what it reads from the criterion
    pointwise = True
    Options = ContrastiveOptions

    def __init__(self, criterion: Criterion, pool=None, model: str | None = None, dtype: str | None = None, *,
                 name: str | None = None, backend=None, **options):
        criterion.require(self.kind)
        super().__init__(criterion, name)
        self.options = o = ContrastiveOptions.build(with_given(options, model=model, dtype=dtype), "judge")
        self.backend = make_backend(pool, o.model, o.dtype, o.batch_size, None, backend, o.engine)
        self.positive = criterion.get("contrastive.positive")
        self.negative = criterion.get("contrastive.negative")
        self.seed = o.seed

    def principle(self, prompt: Prompt) -> str | None:
        """A constitution's principle for this prompt (seeded): all its candidates share it, so
        their scores stay comparable."""
        task = prompt.messages[-1]["content"] if prompt.messages else prompt.text
        return self.criterion.principle_for(self.seed, task)

    def instructions(self, prompt: Prompt) -> tuple[str, str]:
        principle = self.principle(prompt)
        if not principle:
            return self.positive, self.negative
        return (f"{self.positive} Above all, follow this principle: {principle}",
                f"{self.negative} Above all, go against this principle: {principle}")

    @property
    def name(self) -> str:
        return self._name or f"contrastive:{self.backend.name}"

    def _messages(self, instruction: str, prompt: Prompt) -> list[dict[str, str]]:
        msgs = [m for m in prompt.messages if m["role"] != "system"]
        return [{"role": "system", "content": instruction}, *msgs]

    def score(self, prompts: list[Prompt], responses: list[str]) -> list[float | None]:
        means = {}
        pairs = [self.instructions(p) for p in prompts]
        for k, label in enumerate(("pos", "neg")):
            chats = [self._messages(ins[k], p) for ins, p in zip(pairs, prompts, strict=True)]
            res = self.backend.sequence_logprobs(chats, list(responses),
                                                 desc=f"judge ({label})" if len(prompts) > 32 else None)
            means[label] = [s / n if n else None for s, n in res]
        return [None if p is None or n is None else p - n for p, n in zip(means["pos"], means["neg"], strict=True)]

    def rank(self, prompts, candidates):
        judgments, verdicts = super().rank(prompts, candidates)
        by_id = {p.id: p for p in prompts}
        for j in judgments:
            principle = self.principle(by_id[j.prompt_id])
            if principle:
                j.details["principle"] = principle
        return judgments, verdicts
