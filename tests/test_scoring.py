"""Shared-prefix scoring (rlaif/scoring.py): rows with a common prefix run it once, packed with the
rows' own tokens behind it under a 4D attention mask (or, where a model cannot take such a mask,
from the prefix's key/value cache), and give the numbers a forward pass over every full sequence
gives, within float error. Each test of the numbers runs both ways.

The model is the sharp tiny model (its output depends strongly on context), so reading a wrong
position, a wrong cache row or a wrong position id changes the log-probabilities by far more
than the tolerances here.
"""

from __future__ import annotations

import pytest
import torch

from rlaif.scoring import (
    Sampling,
    chat_prefix_ids,
    continuation_logprobs,
    next_token_logprobs,
    picked_logprobs,
    prefix_groups,
    sampled_logprobs,
    text_ids,
)

INSTRUCTIONS = ("You are a film critic who loved this movie.", "You are a film critic who hated it.")
TASKS = ("Continue this movie review: the film", "A dull, boring and terrible movie", "Which response is better?")
RESPONSES = ("wonderful, moving", "boring and terrible movie with awful pacing and weak writing", "the cast",
             "a great night at the cinema and the score", "dull")

# Largest difference allowed between a summed log-probability from a shared prefix and from the
# full sequence. float32: the two differ only by the order of floating-point sums. bfloat16 (8-bit
# mantissa): a different split of the work rounds differently; measured here about 0.02 on sums of
# up to -80 nats over up to 12 tokens, as much as scoring the full sequences one at a time
# instead of in batches changes them.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 0.1}


def _model(path: str, dtype):
    from rlaif.models import load_causal_lm, load_tokenizer

    return load_tokenizer(path), load_causal_lm(path, "float32").to(dtype).eval()


@pytest.fixture(params=["packed", "cache"])
def path(request, monkeypatch):
    """Which way shared prefixes run: packed sequences, or the prefix's cache (models without 4D masks)."""
    import rlaif.scoring as scoring

    if request.param == "cache":
        monkeypatch.setattr(scoring, "_packable", lambda model: False)
    return request.param


class TokenCounter:
    """Counts the tokens (attention-masked positions excluded) each forward pass of the model runs."""

    def __init__(self, model):
        self.tokens = 0
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        self.tokens += int(kwargs["input_ids"].numel())

    def close(self):
        self.handle.remove()


def _rows(tok):
    prefixes, conts = [], []
    for ins in INSTRUCTIONS:
        for task in TASKS:
            chat = [{"role": "system", "content": ins}, {"role": "user", "content": task}]
            for r in RESPONSES:
                prefixes.append(chat_prefix_ids(tok, chat))
                conts.append(text_ids(tok, r))
    return prefixes, conts


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_prefix_equals_full_sequences(sharp_model, dtype, path):
    tok, model = _model(sharp_model, dtype)
    prefixes, conts = _rows(tok)
    conts[3] = []  # an empty continuation keeps (0.0, 0)
    counter = TokenCounter(model)
    shared = continuation_logprobs(model, tok.pad_token_id, prefixes, conts, batch_size=4)
    shared_tokens, counter.tokens = counter.tokens, 0
    full = continuation_logprobs(model, tok.pad_token_id, prefixes, conts, batch_size=4, share_prefixes=False)
    counter.close()
    assert shared[3] == (0.0, 0) == full[3]
    assert [n for _, n in shared] == [n for _, n in full] == [len(c) for c in conts]
    diff = max(abs(a - b) for (a, _), (b, _) in zip(shared, full, strict=True))
    assert diff <= TOLERANCE[dtype], diff
    spread = max(s for s, _ in full) - min(s for s, n in full if n)
    assert spread > 100 * TOLERANCE[dtype]  # the rows really differ: a mixed-up row would be caught
    assert shared_tokens < 0.75 * counter.tokens  # each prefix ran once per group, not once per row


def test_shared_prefix_sampled_logprobs_with_truncation(sharp_model, path):
    tok, model = _model(sharp_model, torch.float32)
    prefixes, conts = _rows(tok)
    sampling = Sampling(temperature=0.7, top_p=0.9, top_k=20)
    shared = sampled_logprobs(model, tok.pad_token_id, prefixes, conts, sampling, batch_size=6)
    full = sampled_logprobs(model, tok.pad_token_id, prefixes, conts, sampling, batch_size=6, share_prefixes=False)
    for a, b in zip(shared, full, strict=True):
        assert a[2] == b[2]
        assert a[0] == pytest.approx(b[0], abs=1e-4) and a[1] == pytest.approx(b[1], abs=1e-4)


def test_next_token_logprobs_from_a_common_start(sharp_model, path):
    """Pairwise chats of one prompt share their question: its start runs once, answers are unchanged."""
    tok, model = _model(sharp_model, torch.float32)
    chats = [[{"role": "user", "content": f"{TASKS[0]}\n\nResponse 1:\n{a}\n\nResponse 2:\n{b}\n\nAnswer 1 or 2."}]
             for a in RESPONSES for b in RESPONSES if a != b]
    prefixes = [chat_prefix_ids(tok, c) for c in chats] + [chat_prefix_ids(tok, [{"role": "user", "content": "dull"}])]
    options = text_ids(tok, "1") + text_ids(tok, "2")
    counter = TokenCounter(model)
    shared = next_token_logprobs(model, tok.pad_token_id, prefixes, options, batch_size=8)
    shared_tokens, counter.tokens = counter.tokens, 0
    full = next_token_logprobs(model, tok.pad_token_id, prefixes, options, batch_size=8, share_prefixes=False)
    counter.close()
    assert max(abs(x - y) for a, b in zip(shared, full, strict=True) for x, y in zip(a, b, strict=True)) <= 1e-4
    assert len({round(a[0], 3) for a in full}) > 3  # the chats' answers differ
    assert shared_tokens < 0.75 * counter.tokens


def test_several_prefix_batches_and_runs_equal_full_sequences(sharp_model, monkeypatch):
    """A 12-token budget per forward pass puts each group in a prefix pass of its own and splits its
    rows into several runs by length, so the prefix cache is copied for every run but the last."""
    import rlaif.scoring as scoring

    tok, model = _model(sharp_model, torch.float32)
    prefixes, conts = _rows(tok)
    monkeypatch.setattr(scoring, "_packable", lambda model: False)
    runs = []
    real = scoring._tail_batches
    monkeypatch.setattr(scoring, "_tail_batches", lambda *a: runs.append(real(*a)) or runs[-1])
    monkeypatch.setattr(scoring, "_budget", lambda batch_size, lengths: 12)
    shared = continuation_logprobs(model, tok.pad_token_id, prefixes, conts, batch_size=4)
    full = continuation_logprobs(model, tok.pad_token_id, prefixes, conts, batch_size=4, share_prefixes=False)
    assert len(runs) > 1 and max(len(r) for r in runs) > 1  # several passes, some with several runs
    assert max(abs(a - b) for (a, _), (b, _) in zip(shared, full, strict=True)) <= TOLERANCE[torch.float32]


def test_several_packed_passes_and_split_groups_equal_full_sequences(sharp_model, monkeypatch):
    """Groups split into parts of 2 rows, several parts per pass with prefixes of different lengths
    padded to end in one column: each row still reads its own positions."""
    import rlaif.scoring as scoring

    tok, model = _model(sharp_model, torch.float32)
    prefixes, conts = _rows(tok)
    passes = []
    real = scoring._packed_parts
    monkeypatch.setattr(scoring, "_packed_parts", lambda *a: passes.append(real(*a)) or passes[-1])
    monkeypatch.setattr(scoring, "PACK_ROWS", 2)
    shared = continuation_logprobs(model, tok.pad_token_id, prefixes, conts, batch_size=8)
    full = continuation_logprobs(model, tok.pad_token_id, prefixes, conts, batch_size=8, share_prefixes=False)
    batches = passes[0]
    assert len(batches) > 1 and max(len(b) for b in batches) > 1
    assert all(len(rows) <= 2 for b in batches for _, rows in b)
    assert any(len({n for n, _ in b}) > 1 for b in batches)  # prefixes of different lengths in one pass
    assert max(abs(a - b) for (a, _), (b, _) in zip(shared, full, strict=True)) <= TOLERANCE[torch.float32]


def test_packed_parts_cover_every_row_once_within_the_token_budget():
    from rlaif.scoring import PACK_ROWS, _packed_parts

    lengths = [60 + (i * 7) % 40 for i in range(80)]  # 20-token prefixes, own tokens 40-79
    groups = [(20, list(range(g, 80, 4))) for g in range(4)]  # 20 rows each: split in parts
    batches = _packed_parts(groups, 4, lengths)
    assert sorted(r for b in batches for _, rows in b for r in rows) == list(range(80))
    for b in batches:
        assert all(len(rows) <= PACK_ROWS for _, rows in b)
        width = 20 + max(sum(lengths[r] - 20 for r in rows) for _, rows in b)
        assert len(b) == 1 or len(b) * width <= 4 * max(lengths[r] for _, rows in b for r in rows)


def test_packing_probe_rejects_a_model_that_ignores_the_4d_mask(sharp_model):
    """A model whose attention drops the custom mask (as flash-attention kernels do) would let rows see
    each other's tokens: the probe catches it, and its rows run from the prefix's cache instead."""
    import rlaif.scoring as scoring

    tok, model = _model(sharp_model, torch.float32)
    assert scoring._probe_packing(model)

    def drop_4d_mask(module, args, kwargs):
        if kwargs.get("attention_mask") is not None and kwargs["attention_mask"].dim() == 4:
            kwargs["attention_mask"] = None
        return args, kwargs

    handle = model.register_forward_pre_hook(drop_4d_mask, with_kwargs=True)
    try:
        assert not scoring._probe_packing(model)
        scoring._PACKING_WORKS.pop(model, None)
        prefixes, conts = _rows(tok)
        shared = continuation_logprobs(model, tok.pad_token_id, prefixes, conts, batch_size=4)
        full = continuation_logprobs(model, tok.pad_token_id, prefixes, conts, batch_size=4, share_prefixes=False)
        assert max(abs(a - b) for (a, _), (b, _) in zip(shared, full, strict=True)) <= TOLERANCE[torch.float32]
    finally:
        handle.remove()
        scoring._PACKING_WORKS.pop(model, None)


def test_shared_batches_and_runs_cover_every_row_once_within_the_token_budget():
    from rlaif.scoring import SHARED_ROWS_FACTOR, _shared_batches, _tail_batches

    lengths = [60 + (i * 7) % 40 for i in range(40)]  # 20-token prefixes, own tokens 40-79
    groups = [(20, list(range(g, 40, 8))) for g in range(8)]
    batches = _shared_batches(groups, 4, lengths)
    assert sorted(r for b in batches for _, rows in b for r in rows) == list(range(40))
    for b in batches:
        assert sum(len(rows) for _, rows in b) <= SHARED_ROWS_FACTOR * 4
        runs = _tail_batches(b, lengths, 4)
        assert sorted(r for run in runs for _, r in run) == sorted(r for _, rows in b for r in rows)
        budget = 4 * max(lengths[r] for _, rows in b for r in rows)
        own = [[lengths[r] - 20 for _, r in run] for run in runs]
        assert all(len(o) * max(o) <= budget or len(o) == 1 for o in own)
        assert all(o == sorted(o) for o in own) and [o[0] for o in own] == sorted(o[0] for o in own)


def test_picked_logprobs_equals_log_softmax_and_skips_left_padding(monkeypatch):
    import rlaif.scoring as scoring

    monkeypatch.setattr(scoring, "TILE_ELEMENTS", 3 * 50)  # tiles of 3 positions
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g).to(torch.bfloat16)
    targets = torch.randint(0, 50, (3, 7), generator=g)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, 2:] = True
    mask[1, :] = True  # row 2: nothing to score
    for temperature in (1.0, 0.7):
        got = picked_logprobs(logits, targets, mask, temperature)
        ref = torch.log_softmax(logits.float() / temperature, -1).gather(-1, targets[..., None])[..., 0]
        torch.testing.assert_close(got, ref.masked_fill(~mask, 0.0), rtol=1e-6, atol=1e-6)
        assert got.dtype == torch.float32 and not got[2].any() and not got[0, :2].any()


def test_prefix_groups_keep_each_prompt_together():
    a, b = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6, 7, 8, 20, 21]
    seqs = [a + [30], b + [31], a + [32], b + [33], a + [34], [40, 41]]
    limits = [10, 10, 10, 10, 10, 1]
    groups, alone = prefix_groups(seqs, limits)
    assert sorted((n, sorted(rows)) for n, rows in groups) == [(10, [0, 2, 4]), (10, [1, 3])]
    assert alone == [5]
    # a shared start shorter than the minimum is not worth a pass of its own
    groups, alone = prefix_groups([[1, 2, 3, 9], [1, 2, 3, 8]], [3, 3], min_shared=4)
    assert groups == [] and alone == [0, 1]
    # no row shares more than its limit (the positions whose logits it needs run on its own row)
    groups, _ = prefix_groups([a, a], [4, 6], min_shared=2)
    assert groups == [(4, [0, 1])]
