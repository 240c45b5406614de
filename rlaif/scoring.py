"""Teacher-forced log-probabilities of continuations, batched.

Shared by the likelihood-based judges and by evaluation (sequence-level KL). Prefix and
continuation are tokenized separately and concatenated, so the scored tokens are exactly the
continuation's tokens whatever the chat template does at the boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


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


def _continuation_logits(model, pad_id: int, prefixes: Sequence[list[int]], continuations: Sequence[list[int]],
                         batch_size: int, desc: str | None):
    """Yield, per batch of non-empty rows: (row numbers, logits predicting each continuation
    position (b, L, V), the tokens there (b, L), mask (b, L)), L the longest continuation.

    Rows are left-padded so every continuation ends at the last position (a shorter one fills
    the right end of its row), and batches are sorted by length to waste little padding.
    """
    assert len(prefixes) == len(continuations)
    order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]) + len(continuations[i]))
    from rlaif import progress

    bar = progress.bar(len(order), desc or "", "seq", disable=desc is None, leave=False)
    for s in range(0, len(order), batch_size):
        idx = [i for i in order[s : s + batch_size] if continuations[i]]
        bar.update(len(order[s : s + batch_size]) - len(idx))  # empty rows need no forward pass
        if not idx:
            continue
        seqs = [list(prefixes[i]) + list(continuations[i]) for i in idx]
        input_ids, attn, position_ids = left_pad(seqs, pad_id)
        width = max(len(continuations[i]) for i in idx)
        logits = _logits(model, input_ids, attn, position_ids, width + 1)[:, :-1]  # position j predicts j+1
        targets = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.bool)
        for r, i in enumerate(idx):
            c = len(continuations[i])
            targets[r, width - c :] = torch.tensor(continuations[i], dtype=torch.long)
            mask[r, width - c :] = True
        yield idx, logits, targets.to(logits.device), mask.to(logits.device)
        bar.update(len(idx))
    bar.close()


def _token_logprob_sums(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> list[float]:
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp.masked_fill(~mask, 0.0).sum(-1).tolist()


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

    Empty continuations get (0.0, 0).
    """
    out: list[tuple[float, int]] = [(0.0, 0)] * len(prefixes)
    for idx, logits, targets, mask in _continuation_logits(model, pad_id, prefixes, continuations, batch_size, desc):
        for i, total in zip(idx, _token_logprob_sums(logits, targets, mask), strict=True):
            out[i] = (total, len(continuations[i]))
    return out


def truncate_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0,
                    keep: torch.Tensor | None = None) -> torch.Tensor:
    """``logits`` (..., V), already divided by the temperature, with the tokens sampling never draws at -inf.

    The rule of transformers' sampler, applied in its order: top-k (``top_k`` > 0) keeps every
    token at least as likely as the k-th; then top-p (``top_p`` < 1) keeps, most likely first,
    each token whose preceding mass is still below ``top_p`` (so at least one). ``keep`` (...,):
    a token id per row that stays in: it was sampled, so it was inside, and a teacher-forced
    forward pass can differ from the incremental one in the last bits at the nucleus edge.
    """
    out = logits.clone()
    if top_k and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    if keep is not None:
        rows = keep.unsqueeze(-1)
        out = out.scatter(-1, rows, logits.gather(-1, rows))
    return out


class Sampling(NamedTuple):
    """A sampling distribution: softmax(logits / temperature), truncated by top_k / top_p (0 / 1: off)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


UNTRUNCATED = Sampling()  # T = 1, no truncation


@torch.no_grad()
def sampled_logprobs(
    model,
    pad_id: int,
    prefixes: Sequence[list[int]],
    continuations: Sequence[list[int]],
    sampling: Sampling = UNTRUNCATED,
    batch_size: int = 16,
    desc: str | None = None,
) -> list[tuple[float, float, int]]:
    """Per continuation: (sum of log p under the sampling distribution, the same at the temperature
    alone, token count).

    The sampling distribution is softmax(logits / ``temperature``) truncated by ``top_k`` /
    ``top_p`` (``sampling``) and renormalised: the one ``model.generate`` draws from with those settings and
    nothing else. Without truncation both sums are equal. Empty continuations get (0.0, 0.0, 0).
    """
    temperature, top_p, top_k = sampling
    if temperature <= 0:
        raise ValueError(f"sampled_logprobs: temperature must be > 0, got {temperature}")
    truncated = top_k > 0 or top_p < 1.0
    out: list[tuple[float, float, int]] = [(0.0, 0.0, 0)] * len(prefixes)
    for idx, logits, targets, mask in _continuation_logits(model, pad_id, prefixes, continuations, batch_size, desc):
        scaled = logits / temperature
        at_t = _token_logprob_sums(scaled, targets, mask)
        sampled = _token_logprob_sums(truncate_logits(scaled, top_k, top_p, keep=targets), targets, mask) \
            if truncated else at_t
        for i, a, b in zip(idx, sampled, at_t, strict=True):
            out[i] = (a, b, len(continuations[i]))
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
