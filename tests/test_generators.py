"""HFGenerator: samples come from the policy's own distribution whatever the model's saved
generation_config says, and every candidate records its sampled token ids and sampling parameters."""

from __future__ import annotations

import json

import pytest
import torch

from rlaif.generators import HFGenerator
from rlaif.io import read_records, write_records
from rlaif.journal import Journal
from rlaif.scoring import chat_prefix_ids
from rlaif.types import Candidate, Prompt

PROMPTS = [Prompt(f"p{i}", f"item {i}", [{"role": "user", "content": f"Continue this movie review: the film {i}"}],
                  "train") for i in range(3)]

# What a model's own generation_config may say; none of it is the policy's distribution.
POLLUTED = {"do_sample": True, "repetition_penalty": 5.0, "no_repeat_ngram_size": 1, "top_k": 1, "temperature": 0.05,
            "min_new_tokens": 6, "suppress_tokens": [10, 11, 12]}


@pytest.fixture(scope="module")
def polluted_model(tiny_model, tmp_path_factory) -> str:
    """The tiny model, saved again with a generation_config that sets penalties and bad defaults."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    out = tmp_path_factory.mktemp("polluted-llama")
    model.generation_config = GenerationConfig(**{**model.generation_config.to_dict(), **POLLUTED})
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return str(out)


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def test_saved_generation_config_does_not_change_the_samples(tiny_model, polluted_model):
    """Same weights and seed: the model whose generation_config sets a repetition penalty, an n-gram
    ban, top_k=1, a near-zero temperature and suppressed tokens samples exactly what the clean one does."""
    polluted, tok = _load(polluted_model)
    clean, _ = _load(tiny_model)
    saved = json.loads(polluted.generation_config.to_json_string())
    assert {k: saved[k] for k in POLLUTED} == POLLUTED  # the file really says it
    gen = HFGenerator("tiny", num_candidates=4, max_new_tokens=12, temperature=1.0, top_p=1.0, top_k=0,
                      dtype="float32")
    a = gen.generate(polluted, tok, PROMPTS, seed=5)
    b = gen.generate(clean, tok, PROMPTS, seed=5)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert len({tuple(c.token_ids) for c in a}) == len(a)  # not top_k=1 at T=0.05 (one answer per prompt)
    # and the model's own config is left as it was
    assert json.loads(polluted.generation_config.to_json_string()) == saved


def test_top_k_zero_means_no_top_k(tiny_model):
    """top_k: 0 is off, not transformers' default of 50: on a near-uniform 400-token model, 400
    one-token samples use far more than 50 distinct tokens."""
    model, tok = _load(tiny_model)
    gen = HFGenerator("tiny", max_new_tokens=1, temperature=1.0, top_p=1.0, top_k=0, batch_size=400, dtype="float32")
    cands = gen.generate(model, tok, PROMPTS[:1], 400, seed=0)
    assert len({c.token_ids[0] for c in cands}) > 100
    few = HFGenerator("tiny", max_new_tokens=1, top_k=5, batch_size=400, dtype="float32")
    assert len({c.token_ids[0] for c in few.generate(model, tok, PROMPTS[:1], 400, seed=0)}) <= 5


def test_candidates_carry_sampled_ids_and_parameters_through_jsonl_and_journal(tiny_model, tmp_path):
    model, tok = _load(tiny_model)
    gen = HFGenerator("tiny", num_candidates=3, max_new_tokens=10, temperature=0.9, top_p=0.95, top_k=50,
                      batch_size=4, dtype="float32")
    journal = Journal(tmp_path / "journal.jsonl")
    cands = gen.generate(model, tok, PROMPTS, seed=2, journal=journal)
    for c in cands:
        assert c.sampling == {"temperature": 0.9, "top_p": 0.95, "top_k": 50, "max_new_tokens": 10}
        assert len(c.token_ids) == c.num_tokens
        assert (c.token_ids[-1] == tok.eos_token_id) == c.finished  # EOS kept when it was sampled
        assert tok.eos_token_id not in c.token_ids[:-1]
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True).strip()
    write_records(tmp_path / "candidates.jsonl", cands)
    assert read_records(tmp_path / "candidates.jsonl", Candidate) == cands
    # a rerun reads the journaled batches back, ids and parameters included
    again = gen.generate(model, tok, PROMPTS, seed=2, journal=Journal(tmp_path / "journal.jsonl"))
    assert again == cands
    # records written before ids were kept still load, with none
    old = {k: v for k, v in cands[0].to_dict().items() if k not in ("token_ids", "sampling")}
    assert Candidate.from_dict(old).token_ids is None and Candidate.from_dict(old).sampling is None


def test_sampling_params_key_says_model_defaults_are_ignored():
    """The cache key changes with the switch to a clean config: candidates sampled under a model's
    own generation_config are not reused."""
    gen = HFGenerator("tiny", temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=8, dtype="float32")
    assert gen.sampling_params() == {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "max_new_tokens": 8,
                                     "dtype": "float32", "model_defaults": "ignored"}


@pytest.mark.parametrize(("kwargs", "key"), [({"temperature": 0.0}, "temperature"), ({"top_p": 0.0}, "top_p"),
                                             ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k")])
def test_bad_sampling_parameters_are_refused_by_name(kwargs, key):
    with pytest.raises(ValueError, match=key):
        HFGenerator("tiny", **kwargs)


def test_batches_hold_prompts_of_similar_length_and_candidates_return_in_prompt_order(tiny_model, tmp_path):
    """Length buckets: short and long prompts interleaved are batched longest first, so each batch's left
    padding is the gap between neighbours in length, and the candidates come back in prompt order. A
    rerun whose journal holds the first half of the batches gives the same candidates."""
    model, tok = _load(tiny_model)
    words = [2, 30, 3, 28, 1, 31]  # interleaved: batching in given order would pad every batch by ~27 words
    prompts = [Prompt(f"q{i}", "x", [{"role": "user", "content": " ".join(["film"] * w)}], "train")
               for i, w in enumerate(words)]
    gen = HFGenerator("tiny", num_candidates=2, max_new_tokens=4, batch_size=4, dtype="float32")
    widths, padding = [], []
    real = model.generate

    def recording(input_ids, attention_mask, **kw):  # the batches as model.generate receives them
        widths.append(input_ids.shape[1])
        padding.append(int((attention_mask == 0).sum()))
        return real(input_ids=input_ids, attention_mask=attention_mask, **kw)

    model.generate = recording
    journal = Journal(tmp_path / "journal.jsonl")
    cands = gen.generate(model, tok, prompts, seed=1, journal=journal)
    assert [(c.prompt_id, c.index) for c in cands] == [(p.id, i) for p in prompts for i in range(2)]
    lengths = sorted((len(chat_prefix_ids(tok, p.messages)) for p in prompts), reverse=True)
    assert len(widths) == 3 and widths == [lengths[0], lengths[2], lengths[4]]
    # each batch pads only its shorter prompt to its longer neighbour in length
    assert padding == [2 * (lengths[0] - lengths[1]), 2 * (lengths[2] - lengths[3]), 2 * (lengths[4] - lengths[5])]
    assert sum(padding) < 2 * (lengths[0] - lengths[-1])  # in the given order one batch alone would pad this much
    # the journal keys batches by their (prompt id, candidate) items: a rerun reads them all back
    calls = len(widths)
    assert gen.generate(model, tok, prompts, seed=1, journal=Journal(tmp_path / "journal.jsonl")) == cands
    assert len(widths) == calls


def test_gumbel_sampler_draws_from_the_truncated_softmax():
    """Argmax over GumbelSampler's scores is a draw from softmax(logits / T) after top-k and top-p:
    the frequencies of 40,000 draws match those probabilities, and no token outside the nucleus
    is ever drawn."""
    from rlaif.generators.hf import GumbelSampler
    from rlaif.scoring import truncate_logits

    logits = torch.tensor([[2.0, 1.5, 1.0, 0.2, -0.5, -1.0, -3.0, -8.0]]).repeat(40_000, 1)
    for temperature, top_k, top_p in ((1.0, 0, 1.0), (0.7, 5, 0.9)):
        torch.manual_seed(0)
        drawn = GumbelSampler(temperature, top_k, top_p)(None, logits).argmax(-1)
        probs = torch.softmax(truncate_logits(logits[:1] / temperature, top_k, top_p), -1)[0]
        freq = torch.bincount(drawn, minlength=8).double() / len(drawn)
        sem = (probs * (1 - probs) / len(drawn)).sqrt()
        assert torch.all((freq - probs).abs() <= 4 * sem + 1e-9), (freq, probs)
        assert freq[probs == 0].sum() == 0
