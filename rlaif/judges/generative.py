"""Generative judge: a free-text verdict, optionally after a chain of thought (MT-bench style,
Zheng et al. 2023, arXiv:2306.05685).

The judge writes its answer and ends with "Verdict: [[A]]", "[[B]]" or "[[tie]]"; ``parse_verdict``
also reads the common ways models deviate ("Verdict: A", "Response A is better", "Output (b)").
Every comparison is judged in both orders with the texts really swapped; P(a better) is the mean
over the two orders of 1 (a wins), 0 (a loses), 0.5 (tie). A verdict that cannot be parsed (or a
generation that failed) makes that comparison invalid (None) -- it is never defaulted to "A" --
and its raw text is kept in ``last_raw`` (per compare item) and ``verdict_details`` (per verdict of
the last ``rank``).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from rlaif.backends import make_backend
from rlaif.criteria import Criterion
from rlaif.judges.base import Judge, LanguageJudgeOptions, Seed, rank_by_pairs, with_given
from rlaif.judges.pointwise import principle_line, task_text
from rlaif.options import Count, NonNegative
from rlaif.types import Prompt

TEMPLATE = (
    "{instruction}\n\n"
    "{few_shot}{principle}"
    "[Task given to both assistants]\n{prompt}\n\n"
    "[Response A]\n{first}\n[End of Response A]\n\n"
    "[Response B]\n{second}\n[End of Response B]\n\n"
    "{ending}"
)
ENDING_COT = ("First explain your reasoning in a few sentences. Then give your verdict on a last line, exactly "
              "\"Verdict: [[A]]\" if Response A is better, \"Verdict: [[B]]\" if Response B is better, or "
              "\"Verdict: [[tie]]\" if they are equally good.")
ENDING_DIRECT = ("Do not explain. Answer with one line only, exactly \"Verdict: [[A]]\" if Response A is better, "
                 "\"Verdict: [[B]]\" if Response B is better, or \"Verdict: [[tie]]\" if they are equally good.")

# -- parsing -------------------------------------------------------------------------------------
# A choice is A, B or a tie; MT-bench writes its tie as [[C]]. A bare letter ("a") only counts as a
# choice when nothing follows it in its sentence, so "my answer is a bit long" is not a verdict.
_PREFIX = r"(?:response|output|assistant|option|candidate|model)"
_END = r"(?=\s*(?:$|[.,;:!?)\]*\"'\n]))"
_CHOICE = (rf"(?:{_PREFIX}\s*\(?\s*(?P<x1>[ab])\s*\)?(?![a-z])|\(\s*(?P<x2>[ab])\s*\)"
           rf"|(?P<x3>[ab]|tie|draw){_END})")
_BRACKETED = re.compile(r"\[\[\s*(?P<x1>a|b|tie|draw|c)\s*\]\]", re.I)
_LABELLED = re.compile(r"\b(?:final\s+verdict|verdict|final\s+answer|answer|decision|winner|choice|"
                       r"better\s+(?:response|output))\s*(?:is|:|=|-)\s*(?:is\s+)?[\"'*\[]*\s*" + _CHOICE, re.I)
_BARE_LINE = re.compile(r"^\s*[\"'*\[]*\s*" + _CHOICE + r"\s*[\"'*\]]*\s*[.!]?\s*$", re.I)
_BETTER = re.compile(
    rf"(?:{_PREFIX}\s*\(?\s*(?P<x1>[ab])\s*\)?|\(\s*(?P<x2>[ab])\s*\)|\b(?P<x3>[ab]))\s+(?:is|was)\s+"
    r"(?:clearly\s+|slightly\s+|much\s+|far\s+)?(?P<w>better|superior|preferable|preferred|the\s+better|"
    r"more\s+(?:helpful|accurate|appropriate|useful|honest|harmless|positive|concise)|worse|inferior|"
    r"less\s+(?:helpful|accurate|appropriate|useful|honest|harmless|positive|concise))\b", re.I)
_PREFER = re.compile(r"\b(?:prefer|choose|pick|select|go\s+with)\s+" + _CHOICE, re.I)
_TIE_SENTENCE = re.compile(r"\b(?:it'?s\s+a\s+tie|(?:both|the\s+two)(?:\s+responses)?\s+are\s+(?:about\s+)?"
                           r"(?:equally|similarly)\s+\w+|equally\s+good)\b", re.I)


def _choice(m: re.Match) -> str:
    x = next(g for g in (m.group("x1"), m.groupdict().get("x2"), m.groupdict().get("x3")) if g).lower()
    return "tie" if x in ("tie", "draw", "c") else x.upper()


def parse_verdict(text: str | None) -> str | None:
    """"A", "B", "tie", or None when the text holds no verdict (case-insensitive).

    Tiers, the first that matches wins, and within a tier the *last* occurrence (a chain of
    thought may discuss both before concluding): 1. "[[A]]"/"[[B]]"/"[[tie]]" (MT-bench's "[[C]]"
    is a tie); 2. a labelled answer ("Verdict: A", "Final answer: Response (b)", "Winner: tie");
    3. a last line that is only a choice ("Output (a)", "B."); 4. sentences ("Response A is
    better", "Output (b) is worse", "I prefer Assistant B", "both are equally good").
    """
    if not text or not text.strip():
        return None
    for pattern in (_BRACKETED, _LABELLED):
        hits = [(m.start(), _choice(m)) for m in pattern.finditer(text)]
        if hits:
            return max(hits)[1]
    last = [ln for ln in text.splitlines() if ln.strip()][-1]
    m = _BARE_LINE.match(last)
    if m:
        return _choice(m)
    hits = []
    for m in _BETTER.finditer(text):
        slot, word = _choice(m), m.group("w").lower()
        worse = word in ("worse", "inferior") or word.startswith("less")
        hits.append((m.start(), ("B" if slot == "A" else "A") if worse else slot))
    hits += [(m.start(), _choice(m)) for m in _PREFER.finditer(text)]
    hits += [(m.start(), "tie") for m in _TIE_SENTENCE.finditer(text)]
    return max(hits)[1] if hits else None


def p_first_slot(verdict: str | None) -> float | None:
    """P(the response in slot A is better) from a parsed verdict: 1, 0, 0.5 for a tie, None if invalid."""
    return {"A": 1.0, "B": 0.0, "tie": 0.5}.get(verdict) if verdict else None


class GenerativeOptions(LanguageJudgeOptions):
    """``judge=generative``: every option, documented with its default in conf/judge/generative.yaml."""

    CONF: ClassVar[str] = "judge/generative"
    chain_of_thought: bool
    max_new_tokens: Count | None  # None = 24 without chain of thought, 512 with it
    temperature: NonNegative
    few_shot: bool
    seed: Seed
    api: dict[str, Any] | None  # APIBackend's settings; null = a local model


class GenerativeJudge(Judge):
    """Keyword arguments override the YAML's defaults (``GenerativeOptions``); ``model`` and ``dtype``
    may also come positionally."""

    kind = "generative"
    wording = ("generative.instruction",)  # what it reads from the criterion
    pointwise = False
    Options = GenerativeOptions

    def __init__(self, criterion: Criterion, pool=None, model: str | None = None, dtype: str | None = None, *,
                 name: str | None = None, backend=None, **options):
        criterion.require(self.kind)
        super().__init__(criterion, name)
        self.options = o = GenerativeOptions.build(with_given(options, model=model, dtype=dtype), "judge")
        self.backend = make_backend(pool, o.model, o.dtype, o.batch_size, o.api, backend, o.engine)
        self.instruction = criterion.get("generative.instruction")
        self.chain_of_thought = o.chain_of_thought
        self.max_new_tokens = o.max_new_tokens or (512 if o.chain_of_thought else 24)
        self.temperature = o.temperature
        self.few_shot = criterion.few_shot_text() if o.few_shot else ""
        self.seed = o.seed
        self.last_raw: list[dict] = []  # per item of the last compare(): raw texts, parsed verdicts, principle
        self.verdict_details: list[dict] = []  # per verdict of the last rank(), aligned with its verdicts

    @property
    def name(self) -> str:
        return self._name or f"generative:{self.backend.name}"

    def principle(self, prompt: Prompt, a: str, b: str) -> str | None:
        x, y = sorted((a, b))  # unordered pair: both orders of one comparison share the principle
        return self.criterion.principle_for(self.seed, task_text(prompt), x, y)

    def render(self, prompt: Prompt, first: str, second: str, principle: str | None = None) -> list[dict[str, str]]:
        """The judge's chat for one ordering (exposed so tests can check the swap)."""
        content = TEMPLATE.format(instruction=self.instruction, few_shot=self.few_shot,
                                  principle=principle_line(principle), prompt=task_text(prompt), first=first,
                                  second=second, ending=ENDING_COT if self.chain_of_thought else ENDING_DIRECT)
        return [{"role": "user", "content": content}]

    def compare(self, prompts: list[Prompt], a: list[str], b: list[str]):
        chats, principles = [], []
        for p, x, y in zip(prompts, a, b, strict=True):
            pr = self.principle(p, x, y)
            principles.append(pr)
            chats.append(self.render(p, x, y, pr))  # a in slot A
            chats.append(self.render(p, y, x, pr))  # a in slot B (texts swapped)
        raw = self.backend.generate(chats, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                    seed=self.seed)
        out, self.last_raw = [], []
        for k, pr in enumerate(principles):
            r1, r2 = raw[2 * k], raw[2 * k + 1]
            v1, v2 = parse_verdict(r1), parse_verdict(r2)
            s1 = p_first_slot(v1)
            s2 = p_first_slot(v2)
            out.append((s1, None if s2 is None else 1.0 - s2))
            rec = {"raw_first": r1, "raw_second": r2, "verdict_first": v1, "verdict_second": v2}
            if pr is not None:
                rec["principle"] = pr
            self.last_raw.append(rec)
        return out

    def rank(self, prompts, candidates):
        judgments, verdicts = rank_by_pairs(self, prompts, candidates)
        self.verdict_details = [{"prompt_id": v.prompt_id, "a": v.a, "b": v.b, **r}
                                for v, r in zip(verdicts, self.last_raw, strict=True)]
        for v, r in zip(verdicts, self.last_raw, strict=True):
            v.details = dict(r)  # raw verdict texts (kept for invalid ones too) go to verdicts.jsonl
        invalid: dict[tuple[str, int], int] = {}
        for v, r in zip(verdicts, self.last_raw, strict=True):
            if r["verdict_first"] is None or r["verdict_second"] is None:
                for i in (v.a, v.b):
                    invalid[(v.prompt_id, i)] = invalid.get((v.prompt_id, i), 0) + 1
        for j in judgments:
            j.details["invalid_comparisons"] = invalid.get((j.prompt_id, j.index), 0)
            if not j.valid:
                j.details["invalid"] = "no comparison gave a parseable verdict in both orders"
        return judgments, verdicts
