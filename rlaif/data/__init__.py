"""Prompt sets: bundled files (``builtin:<path>``), local JSONL/text files, and the hub datasets the
papers use (``data.format``: hh_rlhf, tldr, ultrafeedback, imdb; rlaif/data/formats.py), read from
the hub (``hf:<id>``) or a local copy, with their labelled preference pairs.

A JSONL prompt file has one object per line with a ``text`` field (``data.text_field``) and
optionally ``id``; a ``.txt`` file has one prompt per non-empty line. What this module does with
bad input (every problem is reported with the file and line):

* empty file, malformed JSON, a line that is not an object, a missing/empty/non-string text
  field (the error lists the fields the line has), non-UTF-8 bytes, a UTF-16 file: an error;
* a huge file: streamed line by line, only the prompts a run uses are kept in memory
  (``rlaif.data.files``); a line over ``data.max_line_bytes`` (1 MiB): an error;
* exact duplicate texts: dropped with a warning and counted (``data/duplicates_dropped``) so no
  prompt is both trained on and held out (``data.duplicates``: drop | error | keep); duplicate ids:
  an error;
* prompts longer than the policy's context: cut by ``truncate_prompts`` (``data.truncation``);
* prompt texts are data: braces, ``${...}`` and Jinja markup are never interpreted.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rlaif.data.files import DUPLICATES, MAX_LINE_BYTES, PromptFile, PromptFileError
from rlaif.data.formats import (
    DATA_FORMATS,
    FORMATS,
    PROMPT_FILE,
    DatasetSpec,
    load_dataset_with_pairs,
    load_pairs,
)
from rlaif.data.truncation import TRUNCATION, context_length, prompt_token_limit, truncate_prompts
from rlaif.types import Prompt

BUILTIN_DIR = Path(__file__).parent

__all__ = ["BUILTIN_DIR", "DATA_FORMATS", "DUPLICATES", "FORMATS", "MAX_LINE_BYTES", "PROMPT_FILE", "TRUNCATION",
           "DatasetSpec", "PromptFile", "PromptFileError", "PromptFileSpec", "load_dataset_with_pairs", "load_pairs", "context_length", "load_prompts", "load_prompts_with_stats", "open_prompt_file", "prompt_token_limit",
           "read_prompt_file", "require_columns", "resolve_path", "truncate_prompts"]


def resolve_path(path: str) -> Path:
    if path.startswith("builtin:"):
        return BUILTIN_DIR / path[len("builtin:") :]
    return Path(path).expanduser()


def open_prompt_file(path: str, text_field: str = "text", duplicates: str = "drop",
                     max_line_bytes: int = MAX_LINE_BYTES) -> PromptFile:
    return PromptFile(resolve_path(path), text_field, duplicates, max_line_bytes, shown_as=path)


def read_prompt_file(path: str, text_field: str = "text", duplicates: str = "drop",
                     max_line_bytes: int = MAX_LINE_BYTES) -> list[tuple[str, str, str]]:
    """Every prompt of a file as (id, text, source). Raises PromptFileError naming the file and line."""
    f = open_prompt_file(path, text_field, duplicates, max_line_bytes)
    return f.read(range(len(f)))


@dataclass(frozen=True)
class PromptFileSpec:
    """How to read and split a prompt file: the ``data.*`` keys of the same names."""

    path: str
    template: str = "{text}"
    system: str | None = None
    num_train: int | None = None  # None: every prompt not held out
    num_eval: int = 0
    split_seed: int = 0
    text_field: str = "text"
    duplicates: str = "drop"
    max_line_bytes: int = MAX_LINE_BYTES


def load_prompts_with_stats(path: str, **spec) -> tuple[list[Prompt], dict[str, int]]:
    """Load, shuffle with ``split_seed`` and split into eval then train prompts (``spec``: the
    other fields of ``PromptFileSpec``).

    Only the ``num_eval + num_train`` prompts drawn are read into memory. Returns the prompts and
    ``{"data/prompts_in_file", "data/duplicates_dropped"}``.
    """
    s = PromptFileSpec(str(path), **spec)
    f = open_prompt_file(s.path, s.text_field, s.duplicates, s.max_line_bytes)
    n = len(f)
    need = (s.num_train or 0) + s.num_eval
    if need > n:
        dropped = f" after dropping {f.duplicates_dropped} duplicate texts" if f.duplicates_dropped else ""
        raise PromptFileError(
            f"{f.path} has {n} prompts{dropped} but data.num_train + data.num_eval = {need}; lower them"
        )
    # The same shuffle as over a list of every index (an array holds it in 8 bytes per prompt).
    order = array("q", range(n))
    random.Random(s.split_seed).shuffle(order)
    eval_idx = sorted(order[: s.num_eval])
    train_idx = sorted(order[s.num_eval :] if s.num_train is None else order[s.num_eval : s.num_eval + s.num_train])
    items = f.read(eval_idx + train_idx)
    prompts = []
    for k, (pid, text, where) in enumerate(items):
        content = s.template.format(text=text)  # the template is formatted; the text is inserted as data
        msgs = ([{"role": "system", "content": s.system}] if s.system else []) + [{"role": "user", "content": content}]
        prompts.append(Prompt(pid, text, msgs, "eval" if k < len(eval_idx) else "train", where))
    stats = {"data/prompts_in_file": f.rows_in_file, "data/duplicates_dropped": f.duplicates_dropped}
    return prompts, stats


def load_prompts(path: str, **spec) -> list[Prompt]:
    """``load_prompts_with_stats`` without the counts."""
    return load_prompts_with_stats(path, **spec)[0]


def require_columns(available: Iterable[str], needed: Mapping[str, str], source: str, setting: str) -> None:
    """Check that a dataset has the columns a mapping reads, before any row is read.

    ``needed`` maps each role to the column it is read from (``{"prompt": "question", ...}``);
    ``setting`` names the config that chose the mapping. The error names every missing column, the
    dataset and the columns it does have.
    """
    have = [str(c) for c in available]
    missing = [f"'{col}' (for {role})" for role, col in needed.items() if col is not None and col not in have]
    if missing:
        raise PromptFileError(f"{source} has no column {', '.join(missing)}; its columns are: "
                              f"{', '.join(have) or 'none'}. Fix {setting} to name existing columns")
