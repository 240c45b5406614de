"""Typed options of the config sections that are not components (no ``_target_``): the policy,
preferences, data, evaluation, diagnostics and cache. Their defaults are in conf/ (config.yaml
and the group files); these models only say what a valid value is (rlaif/options.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import Field, field_validator, model_validator

from rlaif.backends.vllm import VLLMOptions
from rlaif.data.files import DUPLICATES
from rlaif.data.formats import DATA_FORMATS, FORMATS, HUB_PREFIX, PROMPT_FILE
from rlaif.data.truncation import TRUNCATION
from rlaif.options import Count, Dtype, Engine, NonNegative, Options, Positive
from rlaif.preferences import MODES
from rlaif.reproductions.study import ReproductionOptions, StudyOptions

TopP = Annotated[float, Field(gt=0, le=1)]


class PolicyOptions(Options):
    model: str  # local folder, hub id, or an embedded name
    trust_remote_code: bool
    allow_pickle: bool
    prefer_hub: bool


class PreferencesOptions(Options):
    mode: Literal[MODES]
    min_margin: NonNegative
    source: Literal["judge", "data"]  # data: the dataset's labelled pairs (data.format), no generation or judging


class DataOptions(Options):
    path: str
    text_field: str
    template: str
    system: str | None
    num_train: Count
    num_eval: Count
    split_seed: Annotated[int, Field(ge=0)]
    duplicates: Literal[DUPLICATES]
    max_prompt_tokens: Count | None
    truncation: Literal[TRUNCATION]
    max_line_bytes: Count
    gold: dict[str, Any] | None  # a judge config (``_target_``) that scores the task's gold reward
    format: Literal[DATA_FORMATS]  # how a row becomes a prompt (and a labelled pair): rlaif/data/formats.py
    split: str  # the hub split, or the split's files in a downloaded folder (ignored for a single file)
    hf_name: str | None  # the hub dataset's configuration name (datasets.load_dataset's name)
    hf_data_dir: str | None  # its data_dir (Anthropic/hh-rlhf: helpful-base, harmless-base, ...)
    prefix_words: list[int]  # format imdb: [least, most] words of a review's opening
    criterion: str | None  # the criterion the dataset's labels express (labelled pairs' criterion)

    @field_validator("prefix_words")
    @classmethod
    def _range(cls, v):
        if len(v) != 2 or not 1 <= v[0] <= v[1]:
            raise ValueError(f"expected [least, most] words with 1 <= least <= most, got {v}")
        return v

    @model_validator(mode="after")
    def _hub_needs_a_format(self):
        if self.path.startswith(HUB_PREFIX) and self.format == PROMPT_FILE:
            raise ValueError(f"path: {self.path} is a hub dataset; set data.format to its layout "
                             f"({', '.join(f'{n} for {f.dataset}' for n, f in FORMATS.items())})")
        return self

    @field_validator("template")
    @classmethod
    def _one_slot(cls, v):
        if "{text}" not in v:
            raise ValueError("must contain {text}, where the prompt text goes")
        try:
            v.format(text="x")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"only {{text}} may appear in braces (got {e!r}); write literal braces as {{{{ }}}}") from None
        return v


class EvaluationOptions(Options):
    samples_per_prompt: Count
    temperature: Positive
    top_p: TopP
    max_new_tokens: Count
    batch_size: Count
    dtype: Dtype
    engine: Engine
    kl_dtype: Literal["auto", "float32", "bfloat16"]
    kl_batch_size: Count
    table_rows: Annotated[int, Field(ge=0)]
    heldout_judge: dict[str, Any] | None  # a judge config; checked when it is built
    heldout_criteria: dict[str, Any] | None


class DiagnosticsOptions(Options):
    enabled: bool
    plot: bool
    probe_items: Annotated[int, Field(ge=0)]
    gate: dict[str, Any]  # thresholds: checked by rlaif/diagnostics/gate.py's names in config.validate


class CacheOptions(Options):
    enabled: bool
    dir: str


SECTIONS: dict[str, type[Options]] = {"policy": PolicyOptions, "preferences": PreferencesOptions, "data": DataOptions,
                                      "evaluation": EvaluationOptions, "diagnostics": DiagnosticsOptions,
                                      "cache": CacheOptions, "vllm": VLLMOptions, "study": StudyOptions,
                                      "reproduction": ReproductionOptions}


def section_problems(cfg: DictConfig) -> list[str]:
    problems = []
    for name, model in SECTIONS.items():
        node = OmegaConf.select(cfg, name)
        if isinstance(node, DictConfig):
            problems += model.problems(OmegaConf.to_container(node, resolve=True), name)
    return problems
