"""Teacher-forced log-probabilities of continuations, batched.

Shared by the likelihood-based judges and by evaluation (sequence-level KL). Prefix and
continuation are tokenized separately and concatenated, so the scored tokens are exactly the
continuation's tokens whatever the chat template does at the boundary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm


def chat_prefix_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in newer transformers
        ids = ids["input_ids"]
    return list(ids)


def text_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def left_pad(seqs: list[list[int]], pad_id: int):
    """Batch token lists right-aligned: (input_ids, attention_mask, position_ids)."""
    width = max(len(x) for x in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, seq in enumerate(seqs):
        input_ids[r, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        attn[r, width - len(seq) :] = 1
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attn, position_ids


def _logits(model, input_ids, attn, position_ids, keep: int):
    """Logits of the last ``keep`` positions only (the LM head over a large vocabulary is costly)."""
    device = next(model.parameters()).device
    kwargs = {"input_ids": input_ids.to(device), "attention_mask": attn.to(device), "position_ids": position_ids.to(device)}
    try:
        return model(**kwargs, logits_to_keep=keep).logits[:, -keep:].float()
    except TypeError:  # architectures without logits_to_keep
        return model(**kwargs).logits[:, -keep:].float()


@torch.no_grad()
def continuation_logprobs(
    model,
    pad_id: int,
    prefixes: Sequence[list[int]],
    continuations: Sequence[list[int]],
    batch_size: int = 16,
    desc: str | None = None,
) -> list[tuple[float, int]]:
    """For each (prefix, continuation) return (sum of log p(continuation tokens), token count).

    Empty continuations get (0.0, 0). Rows are left-padded so every continuation ends at the last
    position, and batches are sorted by length to waste little padding.
    """
    assert len(prefixes) == len(continuations)
    order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]) + len(continuations[i]))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(prefixes)
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, desc=desc, disable=desc is None, leave=False):
        idx = [i for i in order[s : s + batch_size] if continuations[i]]
        if not idx:
            continue
        seqs = [list(prefixes[i]) + list(continuations[i]) for i in idx]
        input_ids, attn, position_ids = left_pad(seqs, pad_id)
        keep = max(len(continuations[i]) for i in idx) + 1
        logp = torch.log_softmax(_logits(model, input_ids, attn, position_ids, keep), dim=-1)
        for r, i in enumerate(idx):
            c = len(continuations[i])
            # the token at kept index j+1 is predicted by kept index j
            targets = torch.tensor(continuations[i], dtype=torch.long, device=logp.device)
            pred = logp[r, keep - c - 1 : keep - 1]
            out[i] = (float(pred.gather(-1, targets.unsqueeze(-1)).sum()), c)
    return out


@torch.no_grad()
def next_token_logprobs(model, pad_id: int, prefixes: Sequence[list[int]], token_ids: list[int], batch_size: int = 8):
    """log p(token | prefix) for each candidate token id: one list per prefix."""
    out: list[list[float]] = [[] for _ in prefixes]
    order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        input_ids, attn, position_ids = left_pad([list(prefixes[i]) for i in idx], pad_id)
        logp = torch.log_softmax(_logits(model, input_ids, attn, position_ids, 1)[:, -1], dim=-1)
        for r, i in enumerate(idx):
            out[i] = [float(logp[r, t]) for t in token_ids]
    return out
