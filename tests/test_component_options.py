"""Components' options (judges, generators, optimizers, the reward model, trackers): declared once (an
``Options`` model: types and ranges, no defaults), with their defaults in their YAML under conf/
(rlaif/options.py).

Every YAML in conf/judge/, conf/generator/, conf/optimizer/, conf/reward_model/ and conf/tracker/ is checked against the class its ``_target_`` names:
the model has exactly the YAML's keys, all required; building it with nothing given gives the
values Hydra composes from that YAML; a bad value and a misspelt key are refused naming the key.
Nothing here loads a model: options are checked before anything is built.
"""

from __future__ import annotations

import inspect

import pytest
from conftest import compose_config
from hydra.utils import get_class
from omegaconf import OmegaConf

from rlaif.config import conf_dir
from rlaif.criteria import load_criterion
from rlaif.generators.hf import HFGenerator
from rlaif.judges import PanelJudge, PointwiseJudge, VaderJudge
from rlaif.options import META, Options, OptionsError

COMPONENTS = [(group, path.stem) for group in ("judge", "generator", "optimizer", "reward_model", "tracker")
              for path in sorted((conf_dir() / group).glob("*.yaml"))]
IDS = [f"{group}={option}" for group, option in COMPONENTS]

# One bad value per component, and what the error must say besides the key and the value.
BAD = {
    "judge/contrastive": ("batch_size", 0, "must be >= 1"),
    "judge/pairwise": ("swap_fraction", 1.5, "must be <= 1"),
    "judge/pointwise": ("max_rating", 10, "single digits (0 to 9)"),
    "judge/generative": ("dtype", "float64", "is not one of 'auto', 'float32', 'bfloat16' or 'float16'"),
    "judge/panel": ("aggregation", "median", "is not one of 'mean', 'weights' or 'majority'"),
    "judge/multi_criterion": ("batch_size", -1, "must be >= 1"),
    "judge/reward_model": ("max_length", 0, "must be >= 1"),
    "judge/rule_length": ("unit", "pages", "is not one of 'words', 'chars' or 'tokens'"),
    "judge/rule_regex": ("pattern", "(unclosed", "is not a valid regular expression"),
    "judge/length_biased": ("unit", "pages", "is not one of 'words' or 'chars'"),
    "generator/hf": ("top_p", 1.5, "must be <= 1"),
    "generator/vllm": ("temperature", 0, "must be > 0"),
    "generator/api": ("max_failed_share", 2.0, "must be <= 1"),
    "optimizer/dpo": ("loss_type", "nope", "is not one of 'sigmoid', 'hinge'"),
    "optimizer/ppo": ("gamma", 1.5, "must be <= 1"),
    "optimizer/grpo": ("num_generations", 0, "must be >= 1"),
    "optimizer/rloo": ("epsilon", 0, "must be > 0"),
    "optimizer/online_dpo": ("loss_type", "hinge", "is not one of 'sigmoid' or 'ipo'"),
    "optimizer/cai_sft": ("revision_request", "Rewrite it.", "must contain {principle}"),
    "optimizer/best_of_n": ("n", 0, "must be >= 1"),
    "optimizer/self_rewarding": ("num_candidates", 1, "must be >= 2"),
    "reward_model/default": ("eval_fraction", 1.0, "must be < 1"),
    "tracker/wandb": ("mode", "sometimes", "is not one of 'auto', 'online', 'offline' or 'disabled'"),
}


def _yaml(group: str, option: str) -> dict:
    """The component's node as Hydra composes it from its YAML alone (no experiment on top)."""
    cfg = compose_config([f"{group}={option}", "~experiment"])
    return OmegaConf.to_container(cfg[group], resolve=True)


def _options(node: dict, model) -> dict:
    """A node's options: without Hydra's and the config's own keys, also in a nested options model
    (self-rewarding's ``dpo`` is optimizer=dpo's whole file, ``_target_`` included)."""
    def nested(k):
        ann = model.model_fields[k].annotation if k in model.model_fields else None
        return ann if isinstance(ann, type) and issubclass(ann, Options) else None

    return {k: _options(v, nested(k)) if isinstance(v, dict) and nested(k) else v
            for k, v in node.items() if k not in META}


def _component(group: str, option: str):
    return get_class(_yaml(group, option)["_target_"])


def _build(cls, group: str, **given):
    """The component itself, built in code with ``given`` (judges with a criterion that words every kind)."""
    if group == "judge":
        return cls(load_criterion("positive_sentiment"), **given)
    return cls(**given)  # generators, optimizers and the reward model take options only


@pytest.mark.parametrize(("group", "option"), COMPONENTS, ids=IDS)
def test_fields_are_the_yaml_keys_and_all_required(group, option):
    cls = _component(group, option)
    model = cls.Options
    assert model.CONF == f"{group}/{option}"
    assert set(model.model_fields) == set(_options(_yaml(group, option), model))
    assert all(f.is_required() for f in model.model_fields.values())


@pytest.mark.parametrize(("group", "option"), COMPONENTS, ids=IDS)
def test_no_option_has_a_python_default(group, option):
    """Constructor parameters named after an option only mark "given" (None = the YAML's); no ``**_unused``."""
    cls = _component(group, option)
    params = inspect.signature(cls).parameters
    for name, p in params.items():
        if name in cls.Options.model_fields:
            assert p.default is None, (cls.__name__, name, p.default)
    assert [n for n, p in params.items() if p.kind is inspect.Parameter.VAR_KEYWORD] == ["options"]


@pytest.mark.parametrize(("group", "option"), COMPONENTS, ids=IDS)
def test_building_with_nothing_given_gives_the_yaml_values(group, option):
    cls = _component(group, option)
    node = _yaml(group, option)
    built = cls.Options.build({}).model_dump()
    assert built == _options(node, cls.Options)
    # the composed node itself (what config.validate sees) has no problems
    assert cls.Options.problems(node, group) == []


@pytest.mark.parametrize(("group", "option"), COMPONENTS, ids=IDS)
def test_a_component_built_in_code_with_nothing_given_holds_the_yaml_values(group, option):
    """What self_rewarding, evaluation or the benchmarks get when they pass only a few keywords."""
    cls = _component(group, option)
    given = {"backend": _NoModel()} if "backend" in inspect.signature(cls).parameters else {}
    component = _build(cls, group, **given)
    yaml = _options(_yaml(group, option), cls.Options)
    assert component.options.model_dump() == yaml
    if group == "generator":  # what cache keys and candidates record
        want = {k: yaml[k] for k in ("max_new_tokens", "temperature", "top_p", "top_k")}
        assert {k: component.sampling_params()[k] for k in want} == want


class _NoModel:
    """A judge backend that is never called: building a judge loads nothing."""

    name = identity = "no-model"


@pytest.mark.parametrize(("group", "option"), [c for c in COMPONENTS if "/".join(c) in BAD],
                         ids=[i for i, c in zip(IDS, COMPONENTS, strict=True) if "/".join(c) in BAD])
def test_a_bad_value_is_refused_naming_key_value_and_range(group, option):
    key, value, says = BAD[f"{group}/{option}"]
    cls = _component(group, option)
    with pytest.raises(OptionsError) as e:
        _build(cls, group, **{key: value})
    msg = str(e.value)
    assert f"{group}.{key}: " in msg and (repr(value) in msg or str(value) in msg), msg
    assert says in msg, msg


def test_every_component_with_options_has_a_bad_value_case():
    assert {f"{g}/{o}" for g, o in COMPONENTS if _component(g, o).Options.model_fields} == set(BAD)


@pytest.mark.parametrize(("group", "option"), COMPONENTS, ids=IDS)
def test_a_misspelt_key_is_refused_with_the_closest_name(group, option):
    cls = _component(group, option)
    fields = sorted(cls.Options.model_fields)
    if not fields:  # nothing to suggest: the key is still refused by name
        with pytest.raises(OptionsError, match=rf"{group}\.model: unknown key"):
            _build(cls, group, model="m")
        return
    right = max(fields, key=len)
    wrong = right[:-1]  # its last letter dropped
    with pytest.raises(OptionsError) as e:
        _build(cls, group, **{wrong: None})
    msg = str(e.value)
    assert f"{group}.{wrong}: unknown key" in msg and f"Did you mean '{right}'?" in msg, msg


def test_keywords_override_and_positionals_merge():
    yaml = _yaml("generator", "hf")
    gen = HFGenerator("some-model", top_k=5)
    assert gen.model_name == "some-model" and gen.top_k == 5
    assert gen.max_new_tokens == yaml["max_new_tokens"] and gen.batch_size == yaml["batch_size"]
    assert gen.sampling_params() == {"temperature": float(yaml["temperature"]), "top_p": float(yaml["top_p"]),
                                     "top_k": 5, "max_new_tokens": yaml["max_new_tokens"], "dtype": yaml["dtype"],
                                     "model_defaults": "ignored"}
    panel = PanelJudge(None, [VaderJudge()], "majority")
    assert panel.aggregation == "majority" and panel.options.model == _yaml("judge", "panel")["model"]


def test_panel_members_get_only_the_defaults_their_class_has():
    """A rule member has no model, dtype or batch size: the panel's are not pushed onto it."""
    panel = PanelJudge(None, [{"_target_": "rlaif.judges.VaderJudge"}, {"_target_": "rlaif.judges.RegexJudge"}],
                       batch_size=3)
    assert [type(j).__name__ for j in panel.members.values()] == ["VaderJudge", "RegexJudge"]
    with pytest.raises(OptionsError, match=r"judge\.batch_size: unknown key"):
        VaderJudge(batch_size=3)


def test_pointwise_cross_field_check_names_both_keys():
    with pytest.raises(OptionsError, match=r"min_rating \(5\) must be < max_rating \(3\)"):
        PointwiseJudge(load_criterion("positive_sentiment"), min_rating=5, max_rating=3)
