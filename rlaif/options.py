"""Typed component options with one source of defaults: the YAML file in conf/.

A component declares its options once, as an ``Options`` model (pydantic) whose fields carry the
type and the valid range or choices but no default values. The defaults are the values in the
component's YAML file (``CONF``, e.g. ``optimizer/ppo``), which keeps its comments and stays the
documentation. ``Options.build(given)`` is the YAML's values overridden by ``given`` and checked;
so a component built by Hydra from the composed config and one built in code with a few keyword
arguments get the same defaults, and adding an option is one YAML line plus one field.

``config.validate`` checks every component of a composed config through the same models before
any model loads; errors name the key, the bad value and the valid range or choices, and suggest
the closest name for an unknown key.
"""

from __future__ import annotations

import difflib
import functools
from typing import Annotated, Any, ClassVar, Literal

from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Keys Hydra and the config's own bookkeeping use; never options of the component itself.
META = ("_target_", "_recursive_", "_partial_", "name", "kind")

# Field types used across components.
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=1)]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
TrainDtype = Literal["auto", "float32", "bfloat16"]
MixedPrecision = Literal["auto", "no", "bf16", "fp16"]
Engine = Literal["auto", "transformers", "vllm"]  # what runs a local model; auto: the run's (rlaif.backends)


class OptionsError(ValueError):
    """A component's options are wrong; the message lists every problem, each naming its key."""


class Options(BaseModel):
    """Base of every component's options: strict types, unknown keys rejected, no defaults."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, arbitrary_types_allowed=True)
    CONF: ClassVar[str] = ""  # the YAML under conf/ that holds the defaults, e.g. "optimizer/ppo"

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return _yaml_defaults(cls.CONF) if cls.CONF else {}

    @classmethod
    def build(cls, given: dict[str, Any], where: str | None = None):
        """The YAML defaults overridden by ``given``, checked; raises OptionsError naming each bad key."""
        values = _merge(cls.defaults(), plain(given))
        problems = cls.problems(values, where or cls.CONF.split("/")[0])
        if problems:
            raise OptionsError("Invalid options:\n  - " + "\n  - ".join(problems))
        return cls.model_validate({k: v for k, v in values.items() if k not in META})

    @classmethod
    def problems(cls, values: dict[str, Any], where: str) -> list[str]:
        """Every problem of ``values`` (a component's whole config node) as 'key: what is wrong'."""
        try:
            cls.model_validate({k: v for k, v in values.items() if k not in META})
        except ValidationError as e:
            return [_describe(err, where, cls) for err in e.errors()]
        return []


def plain(x: Any) -> Any:
    """Plain Python containers (Hydra hands over DictConfig / ListConfig)."""
    if OmegaConf.is_config(x):
        return OmegaConf.to_container(x, resolve=True)
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _describe(err: dict, where: str, model: type[BaseModel]) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join([where, *loc]) if loc else where
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "missing":
        return f"{key}: missing; set {key}=<{_expected(model, loc)}>"
    if kind == "extra_forbidden":
        valid = _field_names(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"{key}: unknown key; valid keys: {', '.join(valid) or 'none'}.{hint}"
    if kind == "literal_error":
        return f"{key}: {value!r} is not one of {ctx.get('expected', '')}"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()), "")
        return f"{key}: {value!r} must be {bounds[kind]} {limit}"
    if kind.startswith(("int_", "float_", "bool_", "string_")) or kind in ("int_type", "float_type", "bool_type"):
        want = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string"}
        return f"{key}: expected {want[kind.split('_')[0]]}, got {value!r}"
    if kind == "value_error":  # a field's own check, or a cross-field one whose message starts "<field>: "
        msg = str(ctx.get("error", err["msg"]))
        field, sep, rest = msg.partition(": ")
        if not loc and sep and field in _field_names(model, []):
            return f"{key}.{field}: {rest}"
        return f"{key}: {msg}"
    return f"{key}: {err['msg']} (got {value!r})"


def _field_names(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        ann = model.model_fields.get(part)
        sub = getattr(ann, "annotation", None)
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return []
        model = sub
    return sorted(model.model_fields)


def _expected(model: type[BaseModel], loc: list[str]) -> str:
    field = None
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return "value"
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            model = sub
    return getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "") if field else "value"


@functools.cache
def _yaml_defaults(conf: str) -> dict[str, Any]:
    """conf/<conf>.yaml's values, with its defaults list (``dpo@dpo``) merged and its interpolations
    (``${seed}``, ``${policy.model}``, ``${generator.temperature}``) resolved against the top-level
    config's defaults."""
    from rlaif.config import conf_dir

    root = conf_dir()
    group = conf.split("/")[0]
    node = _load_with_defaults(root, conf)
    top = OmegaConf.load(root / "config.yaml")
    context = {k: v for k, v in OmegaConf.to_container(top, resolve=False).items() if k not in ("defaults", "hydra")}
    choices = {list(d)[0]: list(d.values())[0] for d in top.get("defaults", []) if isinstance(d, dict)}
    for g, option in choices.items():  # the default choice of every group, for cross-group interpolations
        if g != group and option and (root / g / f"{option}.yaml").exists():
            context[g] = OmegaConf.to_container(OmegaConf.load(root / g / f"{option}.yaml"), resolve=False)
    context[group] = node
    return OmegaConf.to_container(OmegaConf.create(context)[group], resolve=True)


def _load_with_defaults(root, conf: str) -> dict:
    group = conf.split("/")[0]
    own = OmegaConf.to_container(OmegaConf.load(root / f"{conf}.yaml"), resolve=False)
    out: dict = {}
    for entry in own.pop("defaults", []) or []:
        if isinstance(entry, str) and "@" in entry:  # "dpo@dpo": conf/<group>/dpo.yaml at key dpo
            option, key = entry.split("@", 1)
            sub = _load_with_defaults(root, f"{group}/{option}")
            out[key] = {k: v for k, v in sub.items() if k not in META}
    return _merge(out, own)


class Lora(Options):
    """``lora``: train low-rank adapters instead of every weight (merged into the saved policy)."""

    enabled: bool
    r: Count
    alpha: Annotated[int | float, Field(gt=0)]
    dropout: Annotated[float, Field(ge=0, lt=1)]
    target_modules: str | list[str]


# Online optimizers: what scores their samples (validated against the judge in config.validate).
RewardSource = Literal["judge", "reward_model"]
RewardReference = Literal["reference_policy"] | None
