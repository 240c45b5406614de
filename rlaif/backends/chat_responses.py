"""Reading chat-completions responses: the reply's text, the first token's top log-probs, and
the log-prob of each answer option among them.

Each function raises (KeyError, IndexError, TypeError, ValueError) on a response that lacks the
expected fields or holds a garbage log-prob, so the request counts as failed; none of them makes
up a value for what the server did not send.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def _finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _message_text(data: dict) -> str:
    content = data["choices"][0]["message"]["content"]
    if not isinstance(content, str):
        raise TypeError(f"choices[0].message.content is {type(content).__name__}, not text")
    return content


def _top_logprobs(data: dict) -> list[dict]:
    logprobs = data["choices"][0].get("logprobs")
    if not isinstance(logprobs, dict) or not logprobs.get("content"):
        raise ValueError("the response has no choices[0].logprobs.content (does the server support "
                         "logprobs/top_logprobs for chat completions?)")
    top = logprobs["content"][0]["top_logprobs"]
    if not isinstance(top, list):
        raise TypeError("choices[0].logprobs.content[0].top_logprobs is not a list")
    return top


_SPACE_MARKERS = str.maketrans({"\u0120": " ", "\u2581": " ", "\u010a": "\n"})  # BPE/SentencePiece pieces


def token_text(entry: Mapping) -> str:
    """A top-logprob entry's token as text, without surrounding whitespace.

    Servers differ: OpenAI and vLLM send the decoded text (" 1"), some llama.cpp builds the raw
    tokenizer piece ("\u01201", "\u25811") or only ``bytes``; all of these are the same answer "1".
    """
    tok = entry.get("token")
    raw = entry.get("bytes")
    if not isinstance(tok, str) and isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        tok = bytes(raw).decode("utf-8", errors="replace")
    if not isinstance(tok, str):
        raise TypeError(f"a top-logprob entry's token is {type(tok).__name__}, not text")
    return tok.translate(_SPACE_MARKERS).strip()


def option_logprobs(top: list[dict], options: Sequence[str]) -> list[float | None]:
    """For each option, the log-prob of the best-ranked top-logprob token equal to it once stripped.

    None when the server's top list does not contain the option -- its probability is then below
    the list's cut-off, which is not the same as zero and is not made up here. A matching entry
    whose log-prob is not a number <= 0 raises ValueError: the response is garbage, and the request
    counts as failed.
    """
    texts = [token_text(entry) for entry in top]
    out: list[float | None] = []
    for option in options:
        best = None
        for entry, text in zip(top, texts, strict=True):
            if text == option.strip():
                lp = entry["logprob"]
                if isinstance(lp, bool) or not isinstance(lp, (int, float)) or math.isnan(lp) or lp > 1e-4:
                    raise ValueError(f"the server gave log-prob {lp!r} for token {entry.get('token')!r}; a log-prob "
                                     "is a number <= 0")
                lp = min(float(lp), 0.0)
                if math.isfinite(lp) and (best is None or lp > best):
                    best = lp
        out.append(best)
    return out
