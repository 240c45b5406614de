"""Judges made of judges: a panel of several judges on one criterion (``PanelJudge``), and one
judge kind applied to several weighted criteria (``MultiCriterionJudge``).

Panel members are combined only through preferences, P(a better than b) in [0, 1], never through
raw scores: a contrastive log-ratio, an expected rating and a VADER score have different scales,
and a preference is the one quantity every kind gives. A comparative member gives its probability
for each order; a pointwise member gives 1 / 0 / 0.5 from comparing its scores of a and b (the
same in both orders, since it never sees them together). The panel is therefore comparative:
``rank`` compares every pair of candidates (like the pairwise judge; a pointwise member scores each
candidate once), and as a TRL reward it needs ``reference`` completions.

Aggregation, per order, over the members with a valid preference (invalid members abstain; the
panel is invalid only when all members are):

* ``mean``: mean probability;
* ``weights``: weighted mean probability, ``weights`` one number >= 0 per member;
* ``majority``: each member votes for a (p > 0.5) or b (p < 0.5) or abstains (p = 0.5); the panel
  gives 1, 0, or 0.5 on a tie; ``weights``, when given, weight the votes.

Simulated annotator noise (AlpacaFarm, Dubois et al. 2023: 25% of the pool's labels flipped):
``flip_rate`` flips the panel's preference, p -> 1 - p in both orders, on a seeded share of the
comparisons. Which comparisons flip is decided by hashing (``flip_seed``, the prompt, the
unordered pair of texts), so both orders, reruns and resumed runs flip the same ones; each
verdict records ``flipped`` in its details and ``last_flipped`` holds the last call's decisions.

Per-member preferences of the last call are kept in ``last_member_prefs`` (member name -> list
aligned with the items, or with the verdicts of the last ``rank``) for inter-judge agreement.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from typing import Any, ClassVar, Literal, get_args

from omegaconf import OmegaConf
from pydantic import model_validator

from rlaif.criteria import Criterion, weighted_criteria
from rlaif.judges.base import Judge, LanguageJudgeOptions, Seed, rank_by_pairs, with_given
from rlaif.options import Fraction, NonNegative
from rlaif.types import Prompt

Aggregation = Literal["mean", "weights", "majority"]
AGGREGATIONS = get_args(Aggregation)


def _ok(x) -> bool:
    return x is not None and math.isfinite(x)


def build_judge(spec, criterion: Criterion, pool=None, backend=None, defaults: dict | None = None) -> Judge:
    """A judge from a config with ``_target_`` (or a ready Judge), given the shared runtime args.

    ``defaults`` (model, dtype, batch_size) fill the keys the member config does not set itself,
    where the member's class has them (a rule judge has no model); ``backend`` likewise.
    """
    from hydra.utils import get_class, instantiate

    if isinstance(spec, Judge):
        return spec
    if OmegaConf.is_config(spec):
        spec = OmegaConf.to_container(spec, resolve=True)
    if not isinstance(spec, dict) or "_target_" not in spec:
        raise ValueError(f"a member judge needs a config with _target_ (e.g. rlaif.judges.PointwiseJudge); got {spec!r}")
    spec = dict(spec)
    cls = get_class(spec["_target_"])
    for k, v in (defaults or {}).items():
        if v is not None and _takes(cls, k):
            spec.setdefault(k, v)
    shared = {"criterion": criterion, "pool": pool}
    if backend is not None and _takes(cls, "backend"):
        shared["backend"] = backend
    return instantiate(spec, _partial_=True)(**shared)


def _takes(cls, key: str) -> bool:
    """Whether a judge class has ``key``: one of its options, or a parameter of its own."""
    options = getattr(cls, "Options", None)
    return (options is not None and key in options.model_fields) or key in inspect.signature(cls).parameters


def aggregate(probs: list[float | None], weights: list[float], how: str) -> float | None:
    valid = [(p, w) for p, w in zip(probs, weights, strict=True) if _ok(p) and w > 0]
    if not valid:
        return None
    if how == "majority":
        a = sum(w for p, w in valid if p > 0.5)
        b = sum(w for p, w in valid if p < 0.5)
        return 1.0 if a > b else 0.0 if b > a else 0.5
    return sum(p * w for p, w in valid) / sum(w for _, w in valid)


def pair_pref(x: float | None, y: float | None) -> float | None:
    """A pointwise judge's preference for a from its scores of a and b."""
    if not (_ok(x) and _ok(y)):
        return None
    return 1.0 if x > y else 0.0 if x < y else 0.5


def _pointwise_prefs(judge: Judge, prompts: list[Prompt], a: list[str], b: list[str]) -> list[float | None]:
    """Score each distinct (prompt, response) once, then compare (rank asks for every pair)."""
    keys: dict[tuple, int] = {}
    ps, rs = [], []
    for p, x in [*zip(prompts, a, strict=True), *zip(prompts, b, strict=True)]:
        key = (p.id, p.text, x)
        if key not in keys:
            keys[key] = len(rs)
            ps.append(p)
            rs.append(x)
    scores = judge.score(ps, rs)
    return [pair_pref(scores[keys[(p.id, p.text, x)]], scores[keys[(p.id, p.text, y)]])
            for p, x, y in zip(prompts, a, b, strict=True)]


def _member_results(judge: Judge, prompts, a, b) -> list[tuple[float | None, float | None]]:
    if judge.pointwise:
        return [(p, p) for p in _pointwise_prefs(judge, prompts, a, b)]
    return judge.compare(prompts, a, b)


def combined_identity(judges) -> str:
    """The model identities behind several judges: one when they share a model (so self-preference
    checks still recognise it), else all of them joined by " + "; model-free judges add nothing."""
    ids = list(dict.fromkeys(j.identity for j in judges if j.identity != j.name))
    return ids[0] if len(ids) == 1 else " + ".join(ids) if ids else "+".join(j.name for j in judges)


def _mean2(first, second) -> float | None:
    return 0.5 * (first + second) if _ok(first) and _ok(second) else None


class PanelOptions(LanguageJudgeOptions):
    """``judge=panel``: every option, documented with its default in conf/judge/panel.yaml. ``model``,
    ``dtype`` and ``batch_size`` fill what a member leaves out; each member checks its own options."""

    CONF: ClassVar[str] = "judge/panel"
    aggregation: Aggregation
    weights: list[NonNegative] | None  # one per member (aggregation: weights or majority)
    members: list[Any]  # member judge configs (with _target_) or ready judges
    flip_rate: Fraction  # share of comparisons whose aggregated preference is flipped (simulated annotator noise)
    flip_seed: Seed

    @model_validator(mode="after")
    def _weights(self):
        if not self.members:
            raise ValueError("members: a panel needs at least one member judge")
        if self.aggregation == "weights" and self.weights is None:
            raise ValueError("weights: aggregation: weights needs judge.weights, one number per member")
        if self.aggregation == "mean" and self.weights is not None:
            raise ValueError("weights: aggregation: mean takes no weights; use aggregation: weights")
        if self.weights is not None:
            if len(self.weights) != len(self.members):
                raise ValueError(f"weights: {self.weights} must be {len(self.members)} numbers >= 0 (one per member)")
            if sum(self.weights) <= 0:
                raise ValueError("weights: the weights sum to 0")
        return self


class PanelJudge(Judge):
    """Keyword arguments override the YAML's defaults (``PanelOptions``); ``members`` and
    ``aggregation`` may also come positionally."""

    kind = "panel"
    pointwise = False
    Options = PanelOptions

    def __init__(self, criterion: Criterion, members: list | None = None, aggregation: str | None = None, *,
                 pool=None, name: str | None = None, backend=None, **options):
        criterion = criterion or Criterion("panel", "each member's own criterion")  # rule-only panels need none
        super().__init__(criterion, name)
        self.options = o = PanelOptions.build(with_given(options, members=members, aggregation=aggregation), "judge")
        self.aggregation = o.aggregation
        self.weights = list(o.weights) if o.weights is not None else [1.0] * len(o.members)
        defaults = {"model": o.model, "dtype": o.dtype, "batch_size": o.batch_size, "engine": o.engine}
        self.members: dict[str, Judge] = {}
        for spec in o.members:
            j = build_judge(spec, criterion, pool, backend, defaults)
            key, n = j.name, 2
            while key in self.members:  # two members of one kind and model still need distinct names
                key, n = f"{j.name}#{n}", n + 1
            self.members[key] = j
        self.last_member_prefs: dict[str, list[float | None]] = {}
        self.last_member_results: dict[str, list[tuple[float | None, float | None]]] = {}
        self.verdict_details: list[dict] = []
        self.flip_rate, self.flip_seed = o.flip_rate, o.flip_seed
        self.last_flipped: list[bool] = []
        self.last_details: list[dict] = []

    @property
    def name(self) -> str:
        noise = f",flip={self.flip_rate:g}" if self.flip_rate > 0 else ""
        return self._name or f"panel:{self.aggregation}({','.join(self.members)}{noise})"

    def flipped(self, prompt: Prompt, x: str, y: str) -> bool:
        """Whether this comparison's label is flipped: seeded by content, the same in both orders."""
        if self.flip_rate <= 0:
            return False
        key = json.dumps([self.flip_seed, prompt.messages, sorted([x, y])], sort_keys=True).encode()
        return int(hashlib.sha256(key).hexdigest()[:8], 16) / 0xFFFFFFFF < self.flip_rate

    @property
    def identity(self) -> str:
        return combined_identity(self.members.values())

    def compare(self, prompts: list[Prompt], a: list[str], b: list[str]):
        results = {n: _member_results(j, prompts, a, b) for n, j in self.members.items()}
        self.last_member_results = results
        self.last_member_prefs = {n: [_mean2(f, s) for f, s in r] for n, r in results.items()}
        out = []
        for k in range(len(a)):
            first = aggregate([r[k][0] for r in results.values()], self.weights, self.aggregation)
            second = aggregate([r[k][1] for r in results.values()], self.weights, self.aggregation)
            out.append((first, second))
        self.last_flipped = [self.flipped(p, x, y) for p, x, y in zip(prompts, a, b, strict=True)]
        out = [(None if f is None else 1.0 - f, None if s is None else 1.0 - s) if flip else (f, s)
               for (f, s), flip in zip(out, self.last_flipped, strict=True)]
        self.last_details = [{"flipped": True} if flip else {} for flip in self.last_flipped]
        return out

    def rank(self, prompts, candidates):
        judgments, verdicts = rank_by_pairs(self, prompts, candidates)
        self.verdict_details = [
            {"prompt_id": v.prompt_id, "a": v.a, "b": v.b, "members": {n: ps[i] for n, ps in self.last_member_prefs.items()}}
            for i, v in enumerate(verdicts)]
        wins: dict[tuple[str, int], dict[str, list[float]]] = {}
        for d in self.verdict_details:
            for n, p in d["members"].items():
                if p is not None:
                    wins.setdefault((d["prompt_id"], d["a"]), {}).setdefault(n, []).append(p)
                    wins.setdefault((d["prompt_id"], d["b"]), {}).setdefault(n, []).append(1.0 - p)
        for j in judgments:
            w = wins.get((j.prompt_id, j.index), {})
            j.details["members"] = {n: (sum(w[n]) / len(w[n]) if w.get(n) else None) for n in self.members}
        return judgments, verdicts


class MultiCriterionOptions(LanguageJudgeOptions):
    """``judge=multi_criterion``: every option, documented with its default in conf/judge/multi_criterion.yaml.
    ``model``, ``dtype`` and ``batch_size`` fill what the member config leaves out."""

    CONF: ClassVar[str] = "judge/multi_criterion"
    judge: dict[str, Any]  # the member judge config (with _target_), built once per criterion
    criteria: list[Any] | None  # [{name, weight}, ...]; empty or null = the composed criterion alone


class MultiCriterionJudge(Judge):
    """One judge kind on several criteria, aggregated with weights.

    ``judge`` is the member config (``_target_`` + options); one member is built per criterion.
    ``criteria`` lists ``{name, weight}`` (names of ``conf/criteria`` files, or inline criteria);
    when empty, the composed criterion alone is used. Pointwise members: the score is the weighted
    mean of the per-criterion scores (in the member's units, so one kind shares one scale) and is
    None when any criterion could not be scored (a partial mean would silently re-weight).
    Comparative members: P(a better) is the weighted mean per order of the per-criterion
    probabilities. Per-criterion results are in ``Judgment.details["per_criterion"]`` and in
    ``last_per_criterion`` (criterion -> list aligned with the items of the last ``score`` or ``compare``).
    """

    kind = "multi_criterion"
    Options = MultiCriterionOptions

    def __init__(self, criterion: Criterion | None = None, judge: dict | None = None, criteria: list | None = None, *,
                 pool=None, name: str | None = None, backend=None, **options):
        self.options = o = MultiCriterionOptions.build(with_given(options, judge=judge, criteria=criteria), "judge")
        if not o.criteria and criterion is None:
            raise ValueError("multi_criterion needs judge.criteria: [{name: <criteria file>, weight: <number>}, ...]")
        components = weighted_criteria(o.criteria) if o.criteria else weighted_criteria([criterion])
        names = [c.name for c, _ in components]
        desc = "weighted criteria: " + ", ".join(f"{c.name} x{w:g}" for c, w in components)
        super().__init__(Criterion("+".join(names), desc), name)
        self.weights = {c.name: w for c, w in components}
        defaults = {"model": o.model, "dtype": o.dtype, "batch_size": o.batch_size, "engine": o.engine}
        self.judges = {c.name: build_judge(o.judge, c, pool, backend, defaults) for c, _ in components}
        kinds = {j.pointwise for j in self.judges.values()}
        self.pointwise = kinds.pop()
        self.last_per_criterion: dict[str, list] = {}

    @property
    def name(self) -> str:
        member = next(iter(self.judges.values())).name
        return self._name or f"multi:{member}[{','.join(f'{n}={w:g}' for n, w in self.weights.items())}]"

    @property
    def identity(self) -> str:
        return combined_identity(self.judges.values())

    def _combine(self, values: list[float | None]) -> float | None:
        if not all(_ok(v) for v in values):
            return None
        ws = list(self.weights.values())
        return sum(v * w for v, w in zip(values, ws, strict=True)) / sum(ws)

    def score(self, prompts: list[Prompt], responses: list[str]) -> list[float | None]:
        return self.score_details(prompts, responses)[0]

    def score_details(self, prompts: list[Prompt], responses: list[str]) -> tuple[list[float | None], list[dict]]:
        per = {n: j.score(prompts, responses) for n, j in self.judges.items()}
        self.last_per_criterion = per
        details = [{"per_criterion": {n: per[n][k] for n in per}} for k in range(len(responses))]
        return [self._combine([per[n][k] for n in per]) for k in range(len(responses))], details

    def compare(self, prompts: list[Prompt], a: list[str], b: list[str]):
        per = {n: j.compare(prompts, a, b) for n, j in self.judges.items()}
        self.last_per_criterion = per
        return [(self._combine([per[n][k][0] for n in per]), self._combine([per[n][k][1] for n in per]))
                for k in range(len(a))]

    def rank(self, prompts, candidates):
        if self.pointwise:  # per-criterion scores come with each score from the memo
            return super().rank(prompts, candidates)
        judgments, verdicts = rank_by_pairs(self, prompts, candidates)
        wins: dict[tuple[str, int], dict[str, list[float]]] = {}
        for i, v in enumerate(verdicts):
            for n, res in self.last_per_criterion.items():
                p = _mean2(*res[i])
                if p is not None:
                    wins.setdefault((v.prompt_id, v.a), {}).setdefault(n, []).append(p)
                    wins.setdefault((v.prompt_id, v.b), {}).setdefault(n, []).append(1.0 - p)
        for j in judgments:
            w = wins.get((j.prompt_id, j.index), {})
            j.details["per_criterion"] = {n: (sum(w[n]) / len(w[n]) if w.get(n) else None) for n in self.judges}
        return judgments, verdicts
