"""Finding conf/, checking command-line overrides, and validating a composed config.

Everything here runs before any model loads, so a typo costs a second, not a model load. Errors
name the key, say what is wrong, and list the valid choices or say what to change.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

GROUPS = ("generator", "judge", "criteria", "optimizer", "reward_model", "data", "evaluation", "diagnostics", "tracker", "experiment")


class ConfigError(ValueError):
    pass


def conf_dir() -> Path:
    """conf/ shipped inside the installed package, or the source checkout's top-level conf/."""
    here = Path(__file__).resolve().parent
    for cand in (here / "conf", here.parent / "conf"):
        if (cand / "config.yaml").exists():
            return cand
    raise FileNotFoundError(f"rlaif cannot find its conf/ folder (looked in {here / 'conf'} and {here.parent / 'conf'})")


def group_options(group: str, root: Path | None = None) -> list[str]:
    root = root or conf_dir()
    base = root / group
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml"))


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def check_overrides(overrides: list[str], config_name: str = "config") -> None:
    """Check group choices and key names of command-line overrides against conf/.

    Hydra itself rejects these too, but without listing what is valid; this runs first so that
    the error says what the choices are. Sweep values (``a,b``) and functions are checked per value.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides([o for o in overrides if not o.startswith("hydra")])
    except Exception as e:  # noqa: BLE001 - hydra reports syntax errors itself, with position
        raise ConfigError(str(e)) from None
    group_choices: dict[str, str] = {}
    for o in parsed:
        key = o.key_or_group
        if o.is_delete() or o.is_add() or o.is_force_add() or key.startswith("hydra"):
            continue
        if key in GROUPS:
            options = group_options(key)
            value = o.value()
            if isinstance(value, Glob):
                values = value.filter(options)
            elif o.is_sweep_override():
                values = [str(v) for v in o.sweep_string_iterator()]
            elif value is None:  # `group=null` drops the group; validation reports what is missing
                continue
            else:
                values = [str(value)]
            for v in values:
                if v not in options:
                    raise ConfigError(
                        f"Unknown {key} '{v}'. Valid choices for {key}: {', '.join(options)}.{_suggest(v, options)}"
                    )
            if values:
                group_choices[key] = values[0]
    gh = GlobalHydra.instance()
    if gh.is_initialized():
        gh.clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name, overrides=[f"{k}={v}" for k, v in group_choices.items()])
    for o in parsed:
        key = o.key_or_group
        if key in GROUPS or o.is_add() or o.is_force_add() or key.startswith("hydra"):
            continue
        parent_path, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
        if not isinstance(parent, DictConfig):
            raise ConfigError(f"Unknown key '{key}': '{parent_path}' is not a section of the config.")
        if leaf not in parent:
            valid = sorted(str(k) for k in parent.keys())
            where = f"'{parent_path}'" if parent_path else "the top level"
            raise ConfigError(
                f"Unknown key '{key}'. Valid keys in {where}: {', '.join(valid)}.{_suggest(leaf, valid)} "
                f"(to add a new key on purpose, write +{key}=...)"
            )


# ---- validation of the composed config ------------------------------------------------------

def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class _Checker:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.errors: list[str] = []

    def get(self, key: str) -> Any:
        return OmegaConf.select(self.cfg, key, default=None, throw_on_missing=False)

    def need(self, key: str, kind: str, low: float | None = None, high: float | None = None,
             low_open: bool = False, choices: tuple | None = None, optional: bool = False) -> None:
        v = self.get(key)
        if v is None:
            if not optional:
                self.errors.append(f"{key}: missing; set {key}=<{kind}>")
            return
        if kind == "int" and (not isinstance(v, int) or isinstance(v, bool)):
            self.errors.append(f"{key}: expected an integer, got {v!r}")
            return
        if kind == "number" and not _num(v):
            self.errors.append(f"{key}: expected a number, got {v!r}")
            return
        if kind == "str" and not isinstance(v, str):
            self.errors.append(f"{key}: expected a string, got {v!r}")
            return
        if kind == "bool" and not isinstance(v, bool):
            self.errors.append(f"{key}: expected true or false, got {v!r}")
            return
        if choices is not None and v not in choices:
            self.errors.append(f"{key}: '{v}' is not one of {', '.join(map(str, choices))}")
        if low is not None and ((v <= low) if low_open else (v < low)):
            self.errors.append(f"{key}: {v} must be {'>' if low_open else '>='} {low}")
        if high is not None and v > high:
            self.errors.append(f"{key}: {v} must be <= {high}")




def component_problems(cfg: DictConfig) -> list[str]:
    """Each component's options (generator, judge, optimizer, reward model, tracker) checked against the
    ``Options`` model its class declares (rlaif/options.py): types, ranges, choices, unknown keys."""
    from hydra.utils import get_class

    problems = []
    for group in ("generator", "judge", "optimizer", "reward_model", "tracker"):
        node = OmegaConf.select(cfg, group)
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if not target:
            continue
        try:
            cls = get_class(target)
        except Exception as e:  # noqa: BLE001 - any import failure is the same config problem
            problems.append(f"{group}._target_: cannot import {target} ({type(e).__name__}: {e})")
            continue
        options = getattr(cls, "Options", None)
        if options is not None:
            problems += options.problems(OmegaConf.to_container(node, resolve=True), group)
    return problems


def _needs_reward(optimizer_cfg) -> bool:
    """Whether the configured optimizer calls a reward on its own samples (its class's ``needs_reward``)."""
    from hydra.utils import get_class

    try:
        return bool(getattr(get_class(optimizer_cfg.get("_target_")), "needs_reward", False))
    except Exception:  # noqa: BLE001 - an unimportable optimizer is reported by component_problems
        return False


def _judge_compares_pairs(judge_cfg) -> bool:
    """Whether the configured judge only compares pairs (its class's ``pointwise`` is False).

    Reads the class (imported, not instantiated); a panel or multi-criterion judge compares pairs
    unless every member is pointwise.
    """
    from hydra.utils import get_class

    d = OmegaConf.to_container(judge_cfg, resolve=False) if OmegaConf.is_config(judge_cfg) else dict(judge_cfg or {})
    kind = d.get("kind")
    if kind == "panel":
        return True
    if kind == "multi_criterion":
        return _judge_compares_pairs(d.get("judge") or {})
    try:
        return not getattr(get_class(d["_target_"]), "pointwise", True)
    except Exception:  # noqa: BLE001 - an unimportable judge is reported by the wording check
        return False


def validate(cfg: DictConfig) -> None:
    """Check names, types and combinations; raise ConfigError listing every problem."""
    from rlaif.sections import section_problems

    c = _Checker(cfg)
    for group in GROUPS[:-1]:
        if c.get(group) is None:
            c.errors.append(f"{group}: missing config group; choose one of {', '.join(group_options(group))}")
    if c.errors:
        raise ConfigError("Invalid config:\n  - " + "\n  - ".join(c.errors))
    c.need("seed", "int", low=0)
    _check_secrets(c)
    c.errors += component_problems(cfg)  # generator, judge, optimizer, reward model, tracker: their Options
    c.errors += section_problems(cfg)  # policy, preferences, data, evaluation, diagnostics, cache
    _check_judge(c)
    _check_optimizer(c)
    _check_budget(c)
    _check_gate(c)
    _check_data_pairs(c)
    if c.errors:
        raise ConfigError("Invalid config:\n  - " + "\n  - ".join(c.errors))


def _check_secrets(c: _Checker) -> None:
    from rlaif.manifest import literal_secrets

    for key in literal_secrets(OmegaConf.to_container(c.cfg, resolve=False)):  # the value is never shown
        c.errors.append(f"{key}: looks like a secret written into the config, which is saved with the run; rlaif "
                        "reads keys only from environment variables: export it (e.g. OPENAI_API_KEY=...) and name "
                        "the variable instead (e.g. judge.api.api_key_env=OPENAI_API_KEY)")


def _check_judge(c: _Checker) -> None:
    """The judge kind, the criterion's wording for it, and what the pipeline needs of the generator."""
    from rlaif.criteria import Criterion, required_wording, wording_problems

    c.need("generator.num_candidates", "int", low=2)  # pairs need two candidates per prompt
    api = c.get("judge.api")
    if api:  # the given keys over conf/api/judge.yaml's, as the judge will build them
        from rlaif.backends.api import APIOptions

        given = OmegaConf.to_container(api, resolve=True) if OmegaConf.is_config(api) else dict(api)
        c.errors += APIOptions.problems({**APIOptions.defaults(), "model": c.get("judge.model"), **given}, "judge.api")
    c.need("judge.kind", "str", choices=tuple(required_wording()))
    c.need("criteria.name", "str")
    if c.get("judge.kind") in required_wording() and isinstance(c.get("criteria.name"), str):
        c.errors.extend(wording_problems(c.cfg.judge, Criterion.from_config(c.cfg.criteria)))


def _check_optimizer(c: _Checker) -> None:
    """What the optimizer needs of the rest: a pointwise prompt (self-rewarding), a pointwise reward."""
    from rlaif.criteria import Criterion

    c.need("optimizer.name", "str", choices=tuple(group_options("optimizer")))  # each conf/optimizer file's name
    oname = c.get("optimizer.name")
    if oname == "self_rewarding" and isinstance(c.get("criteria.name"), str):
        missing = Criterion.from_config(c.cfg.criteria).missing_for("pointwise")
        if missing:
            c.errors.append(f"optimizer=self_rewarding: the policy rates its own samples with the criterion's "
                            f"pointwise prompt, but criteria '{c.get('criteria.name')}' has no "
                            + ", ".join(f"criteria.{m}" for m in missing) + "; add it or pick another criteria")
    if _needs_reward(c.cfg.optimizer) and c.get("optimizer.reward_source") == "judge" \
            and c.get("optimizer.reward_reference") is None and _judge_compares_pairs(c.cfg.judge):
        c.errors.append(
            f"optimizer={oname} needs a pointwise reward, but judge={c.get('judge.kind')} only compares pairs. "
            f"Fix one of: optimizer.reward_reference=reference_policy (reward = P(response beats the reference "
            f"policy's sample)); optimizer.reward_source=reward_model (distilled RLAIF: a reward model trained "
            f"on the judge's preference pairs); or a pointwise judge (judge=contrastive, pointwise, "
            f"reward_model or rule)")


def _check_budget(c: _Checker) -> None:
    for key in ("budget.judge_calls", "budget.generated_tokens"):
        v = c.get(key)
        if v is not None and v != "offline" and not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            c.errors.append(f"{key}: expected null, a positive int, or 'offline' (what the offline labelling spent), got {v!r}")
    if c.get("budget.judge_calls") is not None and c.get("budget.generated_tokens") is not None:
        c.errors.append("budget: set judge_calls or generated_tokens, not both")


def _check_data_pairs(c: _Checker) -> None:
    """``preferences.source=data``: the dataset must have labelled pairs and the optimizer must train on pairs."""
    from hydra.utils import get_class

    from rlaif.data.formats import FORMATS

    if c.get("preferences.source") != "data":
        return
    fmt = c.get("data.format")
    with_pairs = [n for n, f in FORMATS.items() if f.pairs]
    if fmt not in with_pairs:
        c.errors.append(f"preferences.source=data trains on the dataset's labelled pairs, but data.format={fmt} has "
                        f"none; use a data.format with pairs ({', '.join(with_pairs)}) or preferences.source=judge")
    try:
        cls = get_class(c.get("optimizer._target_"))
    except Exception:  # noqa: BLE001 - reported by component_problems
        cls = None
    if cls is not None and not (getattr(cls, "needs_pairs", False) and not getattr(cls, "needs_reward", False)):
        c.errors.append(f"preferences.source=data gives fixed pairs, which optimizer={c.get('optimizer.name')} does "
                        "not train on (it samples or rates its own responses); use optimizer=dpo, or "
                        "preferences.source=judge")
    if c.get("diagnostics.enabled"):
        c.errors.append("preferences.source=data: the judge diagnostics read the judge's verdicts on sampled "
                        "candidates, and none are made; set diagnostics=none")


def _check_gate(c: _Checker) -> None:
    from rlaif.diagnostics.gate import GATES, SETTINGS

    for key, value in (c.get("diagnostics.gate") or {}).items():
        if key in SETTINGS:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                c.errors.append(f"diagnostics.gate.{key}: expected a whole number of pairs >= 1 or null, got {value!r}")
        elif key not in GATES:
            c.errors.append(f"diagnostics.gate.{key}: unknown gate; choose from {', '.join(sorted(GATES | SETTINGS))}")
        elif value is not None and not (_num(value) and 0 <= value <= 1):
            c.errors.append(f"diagnostics.gate.{key}: expected a rate in [0, 1] or null, got {value!r}")
