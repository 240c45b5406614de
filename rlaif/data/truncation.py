"""Fitting prompts into the policy's context: cut the raw text, never the template.

``data.max_prompt_tokens`` bounds the chat-formatted prompt (system message, template, the
tokenizer's chat markup and the generation prompt, as ``rlaif.scoring.chat_prefix_ids`` builds it)
in the policy's tokens; null means the model's context minus the longest response the run
samples. A prompt over the limit is handled by ``data.truncation``:

* ``left`` (default) drops the beginning of the text and keeps its end, like a tokenizer's
  ``truncation_side="left"`` and TRL's ``keep_end``: the policy continues from the end of the text
  (a review opening), and a long user turn usually ends with what is asked of the model;
* ``right`` keeps the beginning;
* ``error`` stops the run, listing the prompts that do not fit.

Only the text inserted at ``{text}`` is cut, at a token boundary of the text, so the instruction
in the template and the system message always survive. Every cut is counted
(``data/truncated_prompts``) and reported in one warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from rlaif.data.files import PromptFileError
from rlaif.types import Prompt

log = logging.getLogger(__name__)

TRUNCATION = ("left", "right", "error")
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_length(model_path: str | Path) -> int | None:
    """The model's context in tokens, from its config.json (None when it does not say)."""
    try:
        cfg = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for section in (cfg, cfg.get("text_config") or {}):
        for key in _CONTEXT_KEYS:
            if isinstance(section.get(key), int) and section[key] > 0:
                return section[key]
    return None


def prompt_token_limit(max_prompt_tokens: int | None, model_path: str | Path, max_new_tokens: int) -> int | None:
    """``data.max_prompt_tokens`` if set, else the model's context minus the response length."""
    if max_prompt_tokens is not None:
        return int(max_prompt_tokens)
    ctx = context_length(model_path)
    if ctx is None:
        return None
    if ctx <= max_new_tokens:
        raise PromptFileError(f"the policy's context ({ctx} tokens, {model_path}/config.json) leaves no room for a "
                              f"prompt before {max_new_tokens} new tokens; lower generator/evaluation max_new_tokens")
    return ctx - int(max_new_tokens)


def _with_text(p: Prompt, text: str, template: str) -> Prompt:
    messages = [dict(m) for m in p.messages]
    messages[-1]["content"] = template.format(text=text)
    return dataclasses.replace(p, text=text, messages=messages)


def _cut(tokenizer, text: str, keep: int, side: str) -> str:
    """The last (``left``) or first (``right``) ``keep`` tokens of ``text``, as a substring of it."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = enc["offset_mapping"]
        if side == "left":
            return text[spans[len(spans) - keep][0]:].lstrip()
        return text[: spans[keep - 1][1]].rstrip()
    except (NotImplementedError, TypeError, KeyError, ValueError):  # a slow tokenizer has no offsets
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return tokenizer.decode(ids[-keep:] if side == "left" else ids[:keep]).strip()


def truncate_prompts(prompts: list[Prompt], tokenizer, max_prompt_tokens: int | None, side: str = "left",
                     template: str = "{text}") -> tuple[list[Prompt], int]:
    """Cut each prompt's text so its chat-formatted prompt has at most ``max_prompt_tokens`` tokens.

    Returns the prompts (new objects where cut; the others unchanged) and how many were cut.
    ``template`` is the data template the messages were built with (``data.template``).
    """
    if side not in TRUNCATION:
        raise ValueError(f"data.truncation must be one of {', '.join(TRUNCATION)}, got {side!r}")
    if max_prompt_tokens is None:
        return list(prompts), 0
    from rlaif.scoring import chat_prefix_ids  # imports torch: only when there is something to measure

    limit = int(max_prompt_tokens)
    lengths = [len(chat_prefix_ids(tokenizer, p.messages)) for p in prompts]
    over = [i for i, n in enumerate(lengths) if n > limit]
    if not over:
        return list(prompts), 0
    shown = "; ".join(f"{prompts[i].source or prompts[i].id} ({lengths[i]} tokens)" for i in over[:3])
    more = f"; and {len(over) - 3} more" if len(over) > 3 else ""
    if side == "error":
        raise PromptFileError(
            f"{len(over)} of {len(prompts)} prompts are longer than data.max_prompt_tokens={limit} tokens with the "
            f"chat template: {shown}{more}. Set data.truncation=left (keep the end of the text) or right, raise "
            "data.max_prompt_tokens, or shorten them")
    out = list(prompts)
    for i in over:
        p = prompts[i]
        base = len(chat_prefix_ids(tokenizer, _with_text(p, "", template).messages))
        if base >= limit:
            raise PromptFileError(
                f"data.max_prompt_tokens={limit} leaves no room for the text of {p.source or p.id}: the system "
                f"message, data.template and chat markup alone take {base} tokens; raise it or shorten the template")
        n_text = len(tokenizer(p.text, add_special_tokens=False)["input_ids"])
        keep = min(n_text, limit - base)
        while keep > 0:
            cut = _with_text(p, _cut(tokenizer, p.text, keep, side), template)
            n = len(chat_prefix_ids(tokenizer, cut.messages))
            if n <= limit:  # tokens can merge differently at the cut and the template: check, then shrink
                out[i] = cut
                break
            keep -= max(1, n - limit)
        else:
            raise PromptFileError(f"could not fit {p.source or p.id} into data.max_prompt_tokens={limit} tokens")
    log.warning("data: cut %d of %d prompts to data.max_prompt_tokens=%d tokens (chat template included), keeping "
                "the %s of each text (data.truncation=%s): %s%s", len(over), len(prompts), limit,
                "end" if side == "left" else "beginning", side, shown, more)
    return out, len(over)
