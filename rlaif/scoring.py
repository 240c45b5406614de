"""Teacher-forced log-probabilities of continuations, batched.

Shared by the likelihood-based judges and by evaluation (sequence-level KL). Prefix and
continuation are tokenized separately and concatenated, so the scored tokens are exactly the
continuation's tokens whatever the chat template does at the boundary.

Rows that share a prefix (the k candidates of one prompt under one judge instruction, the
comparisons of one prompt by a pairwise judge, the samples of one prompt in evaluation) are
scored with that prefix run once: the prefix is packed into one sequence with every row's own
tokens behind it, under a 4D attention mask that lets each row see only the prefix and itself,
with position ids that continue from the prefix. Models whose attention cannot take such a mask
(flash-attention kernels; checked once per model by a probe) run the prefix with a key/value
cache instead, copied to each row, and only the rows' own tokens after it. In exact arithmetic this gives the
same numbers as a forward pass over every full sequence (a causal model's state at a prefix does
not depend on what follows it); in floating point the two differ in the last bits (float32:
about 1e-5 per summed log-probability; bf16: about 1e-2, the same as changing the batch).
"""

from __future__ import annotations

import weakref
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


def _logits(model, input_ids, attn, position_ids, keep: int, **extra):
    """Logits of the last ``keep`` positions only (the LM head over a large vocabulary is costly), in
    the model's dtype (``picked_logprobs`` reads them in float32 tile by tile). ``extra``: more
    forward arguments (a key/value cache)."""
    device = next(model.parameters()).device
    kwargs = {"input_ids": input_ids.to(device), "attention_mask": attn.to(device),
              "position_ids": position_ids.to(device), **extra}
    try:
        return model(**kwargs, logits_to_keep=keep).logits[:, -keep:]
    except TypeError:  # architectures without logits_to_keep
        return model(**kwargs).logits[:, -keep:]


# A common prefix shorter than this is not worth a forward pass of its own.
MIN_SHARED_TOKENS = 8


def _common_length(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    for x, y in zip(a[:limit], b[:limit], strict=False):
        if x != y:
            break
        n += 1
    return n


def prefix_groups(seqs: Sequence[Sequence[int]], limits: Sequence[int],
                  min_shared: int = MIN_SHARED_TOKENS) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """Rows that share a leading run of tokens: ([(shared length, rows)], rows sharing with none).

    Row i may share at most ``limits[i]`` tokens (the positions whose own logits are not needed).
    Rows are sorted by their tokens, so rows with a common prefix are neighbours; a row joins the
    group before it unless it shares more with the row after it (it then starts a group of its
    own) or joining would shorten the group's prefix by more than the row saves. Groups have at
    least two rows and share at least ``min_shared`` tokens.
    """
    limits = [max(int(n), 0) for n in limits]
    order = sorted(range(len(seqs)), key=lambda i: list(seqs[i][: limits[i]]))

    def common(i: int, j: int) -> int:
        return _common_length(seqs[i], seqs[j], min(limits[i], limits[j]))

    groups: list[list] = []  # [shared length, rows]
    for pos, i in enumerate(order):
        if groups:
            shared, rows = groups[-1]
            with_prev = min(shared, common(rows[-1], i))
            with_next = common(i, order[pos + 1]) if pos + 1 < len(order) else 0
            saves_more = len(rows) * with_prev >= (len(rows) - 1) * shared
            if with_prev >= min_shared and with_prev >= with_next and saves_more:
                groups[-1] = [with_prev, [*rows, i]]
                continue
        groups.append([limits[i], [i]])
    shared = [(n, rows) for n, rows in groups if len(rows) > 1]
    alone = sorted(r for n, rows in groups if len(rows) == 1 for r in rows)
    return shared, alone


# Rows per shared-prefix forward, at most this many times ``batch_size``: their own tokens are few, so
# more of them fit in the tokens of a full batch, but each still gets its own rows of logits.
SHARED_ROWS_FACTOR = 4


def _budget(batch_size: int, lengths: Sequence[int]) -> int:
    """Tokens per forward pass: ``batch_size`` of the longest of these rows run whole."""
    return batch_size * max(lengths)


def _shared_batches(groups: list[tuple[int, list[int]]], batch_size: int,
                    lengths: Sequence[int]) -> list[list[tuple[int, list[int]]]]:
    """Groups packed into batches whose prefixes run in one forward pass, shortest prefixes first (so
    prefixes padded together are alike): at most ``SHARED_ROWS_FACTOR * batch_size`` rows and as many
    prefix tokens as ``batch_size`` of their rows run whole. A larger group is split (each part
    runs its prefix)."""
    cap = SHARED_ROWS_FACTOR * batch_size
    parts = [(n, rows[s : s + cap]) for n, rows in sorted(groups, key=lambda g: g[0])
             for s in range(0, len(rows), cap)]

    def fits(grown) -> bool:
        budget = _budget(batch_size, [lengths[r] for _, rs in grown for r in rs])
        return sum(len(r) for _, r in grown) <= cap and len(grown) * grown[-1][0] <= budget

    return _fill(parts, fits)


def _fill(parts: list[tuple[int, list[int]]], fits) -> list[list[tuple[int, list[int]]]]:
    """Consecutive parts in one forward pass while ``fits(parts of the pass)``."""
    batches: list[list[tuple[int, list[int]]]] = []
    for part in parts:
        if batches and fits([*batches[-1], part]):
            batches[-1].append(part)
        else:
            batches.append([part])
    return batches


def _cache_argument(model) -> str:
    """The forward argument that takes a key/value cache (``cache`` since transformers 5.24)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class _Prefixes(NamedTuple):
    """One forward pass over a batch of groups' prefixes: its key/value cache, the logits at each
    prefix's last position and the prefixes' attention mask (left-padded)."""

    cache: object
    last: torch.Tensor
    attn: torch.Tensor


def _prefix_pass(model, pad_id: int, seqs: Sequence[Sequence[int]], batch: list[tuple[int, list[int]]]):
    """The batch's prefixes run once, left-padded, with a cache; None when the model returns no
    key/value cache that rows can be selected from."""
    device = next(model.parameters()).device
    p_ids, p_attn, p_pos = left_pad([list(seqs[rows[0]][:n]) for n, rows in batch], pad_id)
    kwargs = {"input_ids": p_ids.to(device), "attention_mask": p_attn.to(device), "position_ids": p_pos.to(device),
              "use_cache": True}
    try:
        out = model(**kwargs, logits_to_keep=1)
    except TypeError:  # architectures without logits_to_keep
        out = model(**kwargs)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return None
    return _Prefixes(cache, out.logits[:, -1], p_attn)


def _tail_batches(batch: list[tuple[int, list[int]]], lengths: Sequence[int], batch_size: int) -> list[list]:
    """The batch's rows as (group, row) in runs of similar own length (shortest first), each within
    the tokens of ``batch_size`` whole rows and ``SHARED_ROWS_FACTOR * batch_size`` rows: rows of one
    group differ in length, and padding every row to the batch's longest wasted most of the work."""
    cap = SHARED_ROWS_FACTOR * batch_size
    budget = _budget(batch_size, [lengths[r] for _, rs in batch for r in rs])
    items = sorted(((g, r) for g, (_, rs) in enumerate(batch) for r in rs), key=lambda x: lengths[x[1]] - batch[x[0]][0])
    runs: list[list] = []
    for g, r in items:
        tail = lengths[r] - batch[g][0]
        if runs and len(runs[-1]) < cap and (len(runs[-1]) + 1) * tail <= budget:
            runs[-1].append((g, r))
        else:
            runs.append([(g, r)])
    return runs


def _tail_logits(model, pad_id: int, seqs: Sequence[Sequence[int]], batch: list[tuple[int, list[int]]],
                 pre: _Prefixes, run: list, keep: int, last_run: bool) -> tuple[list[int], torch.Tensor]:
    """(rows, logits of each row's last ``keep`` positions (b, keep, V)) for one run of rows on top of
    their prefixes' cache.

    The cache is copied to every row of its group; the rows' own tokens (left-padded, so every row
    ends at the last column) run on top of it with positions continuing from their prefix. A row
    whose own tokens are fewer than ``keep`` gets its prefix's last logits in the column before its
    first own token; columns before that are not defined (no caller reads them). ``last_run``: the
    prefix cache is not needed afterwards (selected in place, not copied).
    """
    import copy

    device = next(model.parameters()).device
    which = [g for g, _ in run]
    rows = [r for _, r in run]
    group_of = torch.tensor(which, dtype=torch.long)
    cache = pre.cache if last_run else copy.deepcopy(pre.cache)
    cache.batch_select_indices(group_of.to(device))  # rows of one group share the prefix's keys and values
    tails = [list(seqs[r][batch[g][0]:]) for g, r in run]
    t_ids, t_attn, t_pos = left_pad(tails, pad_id)
    start = torch.tensor([batch[g][0] for g in which], dtype=torch.long)
    width = t_ids.shape[1]
    logits = _logits(model, t_ids, torch.cat([pre.attn[group_of], t_attn], dim=1), t_pos + start[:, None],
                     min(keep, width), **{_cache_argument(model): cache}, use_cache=True)
    if keep > width:
        logits = torch.cat([logits.new_zeros(len(rows), keep - width, logits.shape[-1]), logits], dim=1)
    for r, tail in enumerate(tails):
        col = keep - 1 - len(tail)
        if col >= 0:
            logits[r, col] = pre.last[which[r]]
    return rows, logits


# Rows per packed sequence (one prefix and the own tokens of this many rows after it): attention over
# a packed sequence costs its length squared, so a large group is split into parts of this many rows.
PACK_ROWS = 16


def _packed_parts(groups: list[tuple[int, list[int]]], batch_size: int,
                  lengths: Sequence[int]) -> list[list[tuple[int, list[int]]]]:
    """Groups split into parts of at most ``PACK_ROWS`` rows, and the parts into forward passes of at
    most the tokens of ``batch_size`` of their longest rows run whole (counted with the padding to
    the pass's longest prefix and longest own tokens). Parts are sorted by prefix length, then by own
    tokens, so parts padded together are alike."""
    parts = [(n, rows[s : s + PACK_ROWS]) for n, rows in groups for s in range(0, len(rows), PACK_ROWS)]
    parts.sort(key=lambda part: (part[0], sum(lengths[r] for r in part[1])))

    def fits(grown) -> bool:
        width = max(n for n, _ in grown) + max(sum(lengths[r] - n for r in rs) for n, rs in grown)
        return len(grown) * width <= _budget(batch_size, [lengths[r] for _, rs in grown for r in rs])

    return _fill(parts, fits)


def _packed_logits(model, pad_id: int, seqs: Sequence[Sequence[int]], batch: list[tuple[int, list[int]]],
                   keep: int) -> tuple[list[int], torch.Tensor]:
    """(rows, logits of each row's last ``keep`` positions (b, keep, V)) for a batch of groups, each
    packed into one sequence: its prefix once, then every row's own tokens one after another.

    A 4D attention mask lets each row's tokens see the prefix and their own earlier tokens only, and
    their position ids continue from the prefix, so each row's logits are those of its full sequence.
    Prefixes are left-padded to end in one column, so the LM head runs from there on only. A row's
    positions before the prefix's last are not defined (zeros; no caller reads them).
    """
    device = next(model.parameters()).device
    start = max(n for n, _ in batch)  # the column after every prefix's last token
    width = start + max(sum(len(seqs[r]) - n for r in rows) for n, rows in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(batch), width), dtype=torch.long)
    seg = torch.full((len(batch), width), -1, dtype=torch.long)  # 0: the prefix, k: row k's own tokens, -1: padding
    rows, src_row, src_col = [], [], []
    for b, (n, members) in enumerate(batch):
        ids[b, start - n : start] = torch.tensor(list(seqs[members[0]][:n]), dtype=torch.long)
        pos[b, start - n : start] = torch.arange(n)
        seg[b, start - n : start] = 0
        col = start
        for k, r in enumerate(members, 1):
            own = list(seqs[r][n:])
            ids[b, col : col + len(own)] = torch.tensor(own, dtype=torch.long)
            pos[b, col : col + len(own)] = torch.arange(n, n + len(own))
            seg[b, col : col + len(own)] = k
            # full-sequence position q sits in column (start - n + q) in the prefix, (col + q - n) after it
            qs = range(len(seqs[r]) - keep, len(seqs[r]))
            src_col.append([col + q - n if q >= n else start - n + q if q >= n - 1 else -1 for q in qs])
            src_row.append(b)
            rows.append(r)
            col += len(own)
    same = seg[:, :, None] == seg[:, None, :]
    sees_prefix = (seg[:, None, :] == 0) & (seg[:, :, None] > 0)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = (same | sees_prefix) & causal
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    kwargs = {"input_ids": ids.to(device), "attention_mask": mask[:, None].to(device), "position_ids": pos.to(device)}
    first = start - 1  # the LM head runs from the last prefix column on
    cols = torch.tensor(src_col, dtype=torch.long)
    where = (torch.tensor(src_row)[:, None].to(device), (cols - first).clamp(min=0).to(device))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:  # the rows' positions are picked from the hidden states, before the LM head
        handle = head.register_forward_pre_hook(lambda module, args: (args[0][where], *args[1:]))
    try:
        try:
            logits = model(**kwargs, logits_to_keep=torch.arange(first, width, device=device)).logits
        except TypeError:  # architectures without logits_to_keep
            logits = model(**kwargs).logits[:, first:]
    finally:
        if head is not None:
            handle.remove()
    if head is None:
        logits = logits[where]
    undefined = (cols < 0).to(device)
    if undefined.any():
        logits[undefined] = 0
    return rows, logits


# Models whose forward pass honours a 4D attention mask (checked once per model against full sequences).
_PACKING_WORKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _packable(model) -> bool:
    """Whether rows sharing a prefix can run packed (``_packed_logits``) on this model: its attention
    takes a custom 4D mask (eager or SDPA attention; flash-attention kernels ignore such masks), and a
    two-row probe gives the full sequences' logits. Otherwise they run from the prefix's cache."""
    if model not in _PACKING_WORKS:
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        _PACKING_WORKS[model] = impl in ("sdpa", "eager") and _probe_packing(model)
    return _PACKING_WORKS[model]


def _probe_packing(model) -> bool:
    vocab = model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(3, max(vocab, 4), (13,), generator=g).tolist()
    seqs = [toks[:8] + toks[8:11], toks[:8] + toks[11:]]  # an 8-token prefix, own tokens of 3 and 2
    try:
        with torch.no_grad():
            _, packed = _packed_logits(model, 0, seqs, [(8, [0, 1])], keep=3)
            full = [_logits(model, *left_pad([s], 0), keep=3)[0] for s in seqs]
    except Exception:  # noqa: BLE001 - any failure means: use the cache path
        return False
    for r in range(2):
        a, b = packed[r, -2:].float(), full[r][-2:].float()  # row 1's first column is not defined
        if not torch.allclose(a, b, atol=0.1 + 0.02 * float(b.abs().max()), rtol=0):
            return False
    return True


def _batches(model, pad_id: int, seqs: Sequence[Sequence[int]], limits: Sequence[int], keep_of, batch_size: int,
             share: bool):
    """Yield (rows, logits of each row's last ``keep_of(rows)`` positions): the rows sharing a prefix
    with others packed behind it (or from that prefix's cache), the rest as whole sequences sorted by
    length."""
    groups, alone = prefix_groups(seqs, limits) if share else ([], list(range(len(seqs))))
    lengths = [len(x) for x in seqs]
    if groups and _packable(model):
        for batch in _packed_parts(groups, batch_size, lengths):
            yield _packed_logits(model, pad_id, seqs, batch, keep_of([r for _, rs in batch for r in rs]))
        groups = []
    for batch in _shared_batches(groups, batch_size, lengths):
        pre = _prefix_pass(model, pad_id, seqs, batch)
        if pre is None:
            alone += [r for _, rs in batch for r in rs]
            continue
        runs = _tail_batches(batch, lengths, batch_size)
        for k, run in enumerate(runs):
            yield _tail_logits(model, pad_id, seqs, batch, pre, run, keep_of([r for _, r in run]),
                               last_run=k == len(runs) - 1)
    order = sorted(alone, key=lambda i: len(seqs[i]))
    for s in range(0, len(order), batch_size):
        rows = order[s : s + batch_size]
        input_ids, attn, position_ids = left_pad([list(seqs[i]) for i in rows], pad_id)
        yield rows, _logits(model, input_ids, attn, position_ids, keep_of(rows))


def _continuation_logits(model, pad_id: int, prefixes: Sequence[list[int]], continuations: Sequence[list[int]],
                         batch_size: int, desc: str | None, share: bool = True):
    """Yield, per batch of non-empty rows: (row numbers, logits predicting each continuation
    position (b, L, V), the tokens there (b, L), mask (b, L)), L the longest continuation.

    Rows are left-padded so every continuation ends at the last position (a shorter one fills
    the right end of its row). Rows with a common prefix run from its cache (``share``); the
    others are batched sorted by length to waste little padding.
    """
    assert len(prefixes) == len(continuations)
    from rlaif import progress

    bar = progress.bar(len(prefixes), desc or "", "seq", disable=desc is None, leave=False)
    rows = [i for i in range(len(prefixes)) if continuations[i]]
    bar.update(len(prefixes) - len(rows))  # empty rows need no forward pass
    seqs = [list(prefixes[i]) + list(continuations[i]) for i in rows]
    limits = [len(prefixes[i]) for i in rows]

    def keep(batch: list[int]) -> int:  # position j predicts j + 1
        return max(len(continuations[rows[b]]) for b in batch) + 1

    for batch, logits in _batches(model, pad_id, seqs, limits, keep, batch_size, share):
        idx = [rows[b] for b in batch]
        width = logits.shape[1] - 1
        targets = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.bool)
        for r, i in enumerate(idx):
            c = len(continuations[i])
            targets[r, width - c :] = torch.tensor(continuations[i], dtype=torch.long)
            mask[r, width - c :] = True
        yield idx, logits[:, :-1], targets.to(logits.device), mask.to(logits.device)
        bar.update(len(idx))
    bar.close()


# Logits per tile of ``picked_logprobs`` (16 MiB in float32): a tile's passes stay in cache. On a 2-core
# CPU, converting and log-softmaxing whole (16, 40, 49152) bfloat16 logits took longer than the
# transformer's forward pass.
TILE_ELEMENTS = 2**22


def picked_logprobs(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[target] at each position (``(b, L, V)`` -> ``(b, L)``, float32;
    0 where ``mask`` is False), computed in float32 tile by tile with no full-size float32 copy.
    Positions before a row's first masked-in one (its left padding) are not computed."""
    b, length, vocab = logits.shape
    out = torch.zeros((b, length), dtype=torch.float32, device=logits.device)
    rows = max(1, TILE_ELEMENTS // vocab)
    on = mask.any(-1).tolist()
    first = torch.where(mask.any(-1), mask.float().argmax(-1), length).tolist()
    for r in range(b):
        if not on[r]:
            continue
        for a in range(first[r], length, rows):
            z = logits[r, a : a + rows].float()
            if temperature != 1.0:
                z = z / temperature
            t = targets[r, a : a + rows]
            out[r, a : a + rows] = z.gather(-1, t.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)
    return out.masked_fill(~mask, 0.0)


def _token_logprob_sums(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                        temperature: float = 1.0) -> list[float]:
    return picked_logprobs(logits, targets, mask, temperature).sum(-1).tolist()


@torch.no_grad()
def continuation_logprobs(
    model,
    pad_id: int,
    prefixes: Sequence[list[int]],
    continuations: Sequence[list[int]],
    batch_size: int = 16,
    desc: str | None = None,
    share_prefixes: bool = True,
) -> list[tuple[float, int]]:
    """For each (prefix, continuation) return (sum of log p(continuation tokens), token count).

    Empty continuations get (0.0, 0). ``share_prefixes``: rows with the same prefix run from one
    forward pass over it (False: every row's full sequence runs, as the baseline to compare with).
    """
    out: list[tuple[float, int]] = [(0.0, 0)] * len(prefixes)
    for idx, logits, targets, mask in _continuation_logits(model, pad_id, prefixes, continuations, batch_size, desc,
                                                           share_prefixes):
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
    share_prefixes: bool = True,
) -> list[tuple[float, float, int]]:
    """Per continuation: (sum of log p under the sampling distribution, the same at the temperature
    alone, token count).

    The sampling distribution is softmax(logits / ``temperature``) truncated by ``top_k`` /
    ``top_p`` (``sampling``) and renormalised: the one ``model.generate`` draws from with those settings and
    nothing else. Without truncation both sums are equal. Empty continuations get (0.0, 0.0, 0).
    ``share_prefixes`` as in ``continuation_logprobs``.
    """
    temperature, top_p, top_k = sampling
    if temperature <= 0:
        raise ValueError(f"sampled_logprobs: temperature must be > 0, got {temperature}")
    truncated = top_k > 0 or top_p < 1.0
    out: list[tuple[float, float, int]] = [(0.0, 0.0, 0)] * len(prefixes)
    for idx, logits, targets, mask in _continuation_logits(model, pad_id, prefixes, continuations, batch_size, desc,
                                                           share_prefixes):
        at_t = _token_logprob_sums(logits, targets, mask, temperature)
        sampled = _token_logprob_sums(truncate_logits(logits.float() / temperature, top_k, top_p, keep=targets),
                                      targets, mask) if truncated else at_t
        for i, a, b in zip(idx, sampled, at_t, strict=True):
            out[i] = (a, b, len(continuations[i]))
    return out


@torch.no_grad()
def next_token_logprobs(model, pad_id: int, prefixes: Sequence[list[int]], token_ids: list[int], batch_size: int = 8,
                        share_prefixes: bool = True):
    """log p(token | prefix) for each candidate token id: one list per prefix.

    ``share_prefixes``: prefixes with a long common start (one prompt's comparisons) run that
    start once (False: every prefix runs whole)."""
    out: list[list[float]] = [[] for _ in prefixes]
    seqs = [list(p) for p in prefixes]
    limits = [len(p) - 1 for p in seqs]  # the last token's logits are the answer: it runs on its row
    for rows, logits in _batches(model, pad_id, seqs, limits, lambda _: 1, batch_size, share_prefixes):
        logp = torch.log_softmax(logits[:, -1].float(), dim=-1)
        for r, i in enumerate(rows):
            out[i] = [float(logp[r, t]) for t in token_ids]
    return out
