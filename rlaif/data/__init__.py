"""Prompt sets: bundled files (``builtin:<path>``), local JSONL/text files.

A JSONL prompt file has one object per line with a ``text`` field (and optionally ``id``); a
``.txt`` file has one prompt per non-empty line. Problems are reported with the file and line.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rlaif.types import Prompt

BUILTIN_DIR = Path(__file__).parent


class PromptFileError(ValueError):
    pass


def resolve_path(path: str) -> Path:
    if path.startswith("builtin:"):
        return BUILTIN_DIR / path[len("builtin:") :]
    return Path(path).expanduser()


def read_prompt_file(path: str, text_field: str = "text") -> list[tuple[str, str, str]]:
    """Return (id, text, source) per prompt. Raises PromptFileError naming the file and line."""
    p = resolve_path(path)
    if not p.exists():
        raise PromptFileError(f"prompt file {p} does not exist (data.path={path})")
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = p.read_bytes()[: e.start].count(b"\n") + 1
        raise PromptFileError(f"{p}:{line}: not valid UTF-8 (byte {e.start}); re-encode the file as UTF-8") from None
    items: list[tuple[str, str, str]] = []
    is_jsonl = p.suffix in {".jsonl", ".json"}
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        if is_jsonl:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptFileError(f"{where}: malformed JSON ({e.msg}); each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise PromptFileError(f"{where}: expected a JSON object with a '{text_field}' field")
            text = row.get(text_field)
            if not isinstance(text, str) or not text.strip():
                raise PromptFileError(f"{where}: missing or empty '{text_field}' field (data.text_field={text_field})")
            pid = str(row.get("id", f"{p.stem}-{lineno}"))
        else:
            text, pid = line.strip(), f"{p.stem}-{lineno}"
        items.append((pid, text.strip(), where))
    if not items:
        raise PromptFileError(f"{p}: the prompt file is empty; it needs at least one prompt")
    seen: dict[str, str] = {}
    for pid, _, where in items:
        if pid in seen:
            raise PromptFileError(f"{where}: duplicate prompt id '{pid}' (first at {seen[pid]})")
        seen[pid] = where
    return items


def load_prompts(path: str, template: str = "{text}", system: str | None = None, num_train: int | None = None,
                 num_eval: int = 0, split_seed: int = 0, text_field: str = "text") -> list[Prompt]:
    """Load, shuffle with ``split_seed`` and split into train / eval prompts."""
    items = read_prompt_file(path, text_field)
    need = (num_train or 0) + num_eval
    if need > len(items):
        raise PromptFileError(
            f"{resolve_path(path)} has {len(items)} prompts but data.num_train + data.num_eval = {need}; lower them"
        )
    order = list(range(len(items)))
    random.Random(split_seed).shuffle(order)
    eval_idx = set(order[:num_eval])
    train_idx = order[num_eval:] if num_train is None else order[num_eval : num_eval + num_train]
    prompts = []
    for i in sorted(eval_idx) + sorted(train_idx):
        pid, text, where = items[i]
        content = template.format(text=text)
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        prompts.append(Prompt(pid, text, msgs, "eval" if i in eval_idx else "train", where))
    return prompts
