"""Rule judges: programmatic criteria, no language model involved (except a tokenizer for
``LengthJudge(unit="tokens")``). VADER sentiment is the gold labeller of the sentiment task;
length, regex and user callables serve as controls, format checks and custom gold labels.

Each kind has its own ``kind`` name (``rule``, ``rule_length``, ``rule_regex``, ``rule_callable``)
so that configs and records say which rule scored. They ignore the criterion's wording.
"""

from __future__ import annotations

import importlib
import math
import numbers
import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field, field_validator

from rlaif.criteria import Criterion
from rlaif.judges.base import Judge
from rlaif.options import Options
from rlaif.types import Prompt


def _criterion(criterion: Criterion | None, name: str, description: str) -> Criterion:
    return criterion or Criterion(name, description)


class VaderOptions(Options):
    """``judge=rule``: VADER has no options (conf/judge/rule.yaml names only the class and kind)."""

    CONF: ClassVar[str] = "judge/rule"


class VaderJudge(Judge):
    """VADER compound sentiment of the response alone, in [-1, 1]."""

    kind = "rule"
    pointwise = True
    Options = VaderOptions

    def __init__(self, criterion: Criterion | None = None, pool=None, *, name: str | None = None, **options):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.options = VaderOptions.build(options, "judge")
        super().__init__(_criterion(criterion, "positive_sentiment", "VADER compound sentiment"), name)
        self._analyzer = SentimentIntensityAnalyzer()

    @property
    def name(self) -> str:
        return self._name or "rule:vader"

    def score(self, prompts: list[Prompt], responses: list[str]) -> list[float | None]:
        return [float(self._analyzer.polarity_scores(r)["compound"]) for r in responses]


Unit = Literal["words", "chars", "tokens"]


class LengthOptions(Options):
    """``judge=rule_length``: every option, documented with its default in conf/judge/rule_length.yaml."""

    CONF: ClassVar[str] = "judge/rule_length"
    unit: Unit
    target: Annotated[int, Field(ge=0)] | None  # None = use ``prefer``
    prefer: Literal["longer", "shorter"]


class LengthJudge(Judge):
    """Length of the response: ``-|length - target|`` when ``target`` is set, else ``+length``
    (``prefer: longer``) or ``-length`` (``prefer: shorter``).

    ``unit``: ``words`` (whitespace-separated), ``chars``, or ``tokens`` (the tokenizer of
    ``model``, loaded through the pool on first use). Keyword arguments override the YAML's
    defaults (``LengthOptions``); ``model`` is not an option of its own (the YAML has none):
    it is the judge model a panel or ``+judge.model`` gives, needed only for ``unit: tokens``.
    """

    kind = "rule_length"
    pointwise = True
    UNITS = get_args(Unit)
    Options = LengthOptions

    def __init__(self, criterion: Criterion | None = None, pool=None, *, model: str | None = None,
                 name: str | None = None, **options):
        super().__init__(_criterion(criterion, "length", "response length"), name)
        self.options = o = LengthOptions.build(options, "judge")
        if o.unit == "tokens" and (model is None or pool is None):
            raise ValueError("unit: tokens needs judge.model (whose tokenizer counts) and a model pool")
        # (not self.prefer: that is the Judge's preference method)
        self.unit, self.target, self.direction, self.model_name, self.pool = o.unit, o.target, o.prefer, model, pool

    @property
    def name(self) -> str:
        what = f"target={self.target}" if self.target is not None else self.direction
        return self._name or f"rule:length({self.unit},{what})"

    @property
    def identity(self) -> str:
        return self.pool.resolve(self.model_name).identity if self.unit == "tokens" else self.name

    def length(self, text: str) -> int:
        if self.unit == "words":
            return len(text.split())
        if self.unit == "chars":
            return len(text)
        return len(self.pool.tokenizer(self.model_name)(text, add_special_tokens=False)["input_ids"])

    def score(self, prompts: list[Prompt], responses: list[str]) -> list[float | None]:
        out = []
        for r in responses:
            n = self.length(r)
            if self.target is not None:
                out.append(-float(abs(n - self.target)))
            else:
                out.append(float(n) if self.direction == "longer" else -float(n))
        return out


class RegexOptions(Options):
    """``judge=rule_regex``: every option, documented with its default in conf/judge/rule_regex.yaml."""

    CONF: ClassVar[str] = "judge/rule_regex"
    pattern: str  # a Python regex, non-empty
    ignore_case: bool
    invert: bool

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v):
        if not v:
            raise ValueError("the regex judge needs a non-empty pattern")
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"{v!r} is not a valid regular expression: {e}") from None
        return v


class RegexJudge(Judge):
    """1.0 when ``pattern`` is found in the response (``re.search``), else 0.0; ``invert`` swaps.
    Keyword arguments override the YAML's defaults (``RegexOptions``)."""

    kind = "rule_regex"
    pointwise = True
    Options = RegexOptions

    def __init__(self, criterion: Criterion | None = None, pool=None, *, name: str | None = None, **options):
        self.options = o = RegexOptions.build(options, "judge")
        super().__init__(_criterion(criterion, "regex", f"matches {o.pattern!r}"), name)
        self.regex = re.compile(o.pattern, re.IGNORECASE if o.ignore_case else 0)
        self.invert = o.invert

    @property
    def name(self) -> str:
        return self._name or f"rule:regex{'(not)' if self.invert else ''}"

    def score(self, prompts: list[Prompt], responses: list[str]) -> list[float | None]:
        return [float(bool(self.regex.search(r)) != self.invert) for r in responses]


def resolve_callable(path: str) -> Callable:
    """``"package.module:function"`` (or ``module:Class.method``) -> the callable, by import only."""
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ValueError(f"function {path!r} must be an import path 'package.module:function'")
    module_name, attr = path.split(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"function {path!r}: cannot import module '{module_name}' ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"function {path!r}: '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"function {path!r} is a {type(obj).__name__}, not a callable")
    return obj


class CallableOptions(Options):
    """``CallableJudge``: no YAML of its own, so ``function`` has no default and must be given."""

    function: Any  # "package.module:function", or the callable itself

    @field_validator("function")
    @classmethod
    def _callable(cls, v):
        if isinstance(v, str):
            resolve_callable(v)  # raises naming what is wrong with the path
        elif not callable(v):
            raise ValueError(f"{v!r} is not callable")
        return v


class CallableJudge(Judge):
    """A Python function ``(prompt_text, response) -> float``, named by import path.

    ``prompt_text`` is ``Prompt.text`` (the raw data item; for TRL prompts, the last user turn).
    The path is imported, never evaluated. A returned None or non-finite number makes that item
    invalid; exceptions from the function propagate (they are bugs to see, not labels).
    """

    kind = "rule_callable"
    pointwise = True
    Options = CallableOptions

    def __init__(self, criterion: Criterion | None = None, pool=None, *, name: str | None = None, **options):
        self.options = o = CallableOptions.build(options, "judge")
        function = o.function
        super().__init__(_criterion(criterion, "callable", str(function)), name)
        self.function_path = function if isinstance(function, str) else f"{function.__module__}:{function.__qualname__}"
        self.fn = resolve_callable(function) if isinstance(function, str) else function

    @property
    def name(self) -> str:
        return self._name or f"rule:{self.function_path}"

    def score(self, prompts: list[Prompt], responses: list[str]) -> list[float | None]:
        out: list[float | None] = []
        for p, r in zip(prompts, responses, strict=True):
            v = self.fn(p.text, r)
            if v is None:
                out.append(None)
                continue
            if not isinstance(v, numbers.Real):  # bools and numpy scalars are Real too
                raise TypeError(f"{self.function_path} returned {type(v).__name__}; it must return a float or None")
            out.append(float(v) if math.isfinite(v) else None)
        return out
