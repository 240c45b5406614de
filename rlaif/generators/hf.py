"""Batched sampling with transformers.

k candidates per prompt, batched longest prompt first (length buckets: little left padding) and
returned in prompt order; every batch is seeded from (seed, batch number), so the same config
and seed give the same candidates on the same machine. That is also what makes generation
resumable: with a ``journal`` (rlaif/journal.py) each finished batch is recorded, and a rerun
reads finished batches back instead of sampling them -- the batches it still samples get the
same seeds as in an uninterrupted run, so the result is identical. Keep it that way: nothing
may make a batch depend on the batches before it (no RNG state carried across batches).

Samples come from the policy's own distribution and nothing else: generation starts from a
clean ``GenerationConfig`` (temperature, top-p, top-k from this generator's settings), never from
the model's saved ``generation_config``, whose repetition penalties, n-gram bans or default
top-k would make the samples differ from the distribution that evaluation and training score.
Every candidate records its sampled token ids and these sampling parameters.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Annotated, ClassVar, NamedTuple

import torch
from pydantic import Field

from rlaif import progress
from rlaif.options import Count, Dtype, Options, Positive
from rlaif.scoring import _cache_argument, _prefix_pass, chat_prefix_ids, left_pad
from rlaif.types import Candidate, Prompt

log = logging.getLogger(__name__)

# Generation settings that change which tokens are drawn, with the value that leaves them off.
# A model's saved generation_config may set them; they are reported and not used.
_NEUTRAL = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1.0,
            "encoder_no_repeat_ngram_size": 0, "top_k": 0, "top_p": 1.0, "temperature": 1.0, "min_p": None,
            "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "top_h": None, "bad_words_ids": None,
            "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
            "forced_eos_token_id": None, "min_length": 0, "min_new_tokens": None, "guidance_scale": None,
            "sequence_bias": None, "exponential_decay_length_penalty": None, "length_penalty": 1.0}


class SamplingOptions(Options):
    """What every generator reads (config.validate checks all generators alike): the model, how many
    candidates, how long, how they are sampled, and the local batch size and dtype."""

    model: str
    num_candidates: Count  # the pipeline needs >= 2 to form pairs; a generator itself can sample one
    max_new_tokens: Count
    temperature: Positive
    top_p: Annotated[float, Field(gt=0, le=1)]
    top_k: Annotated[int, Field(ge=0)]  # 0 = off
    batch_size: Count
    dtype: Dtype


class SampleTag(NamedTuple):
    """What sampled candidates record and their progress bar shows: the model's identity
    (``Candidate.model``), the source label (``Candidate.source``) and the bar's text."""

    model_id: str = ""
    source: str = "policy"
    desc: str = "generate"


POLICY_SAMPLES = SampleTag()


def take_sampling(gen, model: type[SamplingOptions], name: str | None, given: dict) -> SamplingOptions:
    """Build a generator's options (``name``: the model, which may come positionally) and set the
    sampling settings every generator has on ``gen``; returns the options."""
    gen.options = o = model.build({**given, "model": name} if name is not None else given, "generator")
    gen.model_name, gen.num_candidates, gen.max_new_tokens = o.model, o.num_candidates, o.max_new_tokens
    gen.temperature, gen.top_p, gen.top_k = o.temperature, o.top_p, o.top_k
    return o


class HFGeneratorOptions(SamplingOptions):
    """``generator=hf``: every option, documented with its default in conf/generator/hf.yaml."""

    CONF: ClassVar[str] = "generator/hf"


class HFGenerator:
    """Keyword arguments override the YAML's defaults (``HFGeneratorOptions``); ``model`` may also
    come positionally."""

    Options = HFGeneratorOptions
    engine = "transformers"

    def __init__(self, model: str | None = None, **options):
        o = take_sampling(self, HFGeneratorOptions, model, options)
        self.batch_size = o.batch_size
        self.dtype = o.dtype

    def identity(self, pool) -> str:
        return pool.resolve(self.model_name).identity

    def sample(self, pool, prompts: list[Prompt], k: int | None = None, seed: int = 0, source: str = "policy",
               desc: str = "generate", journal=None) -> list[Candidate]:
        """Sample from the configured model, loaded (once, shared) through the pool."""
        return self.generate(pool.model(self.model_name, self.dtype), pool.tokenizer(self.model_name), prompts, k,
                             seed, SampleTag(self.identity(pool), source, desc), journal=journal)

    def sample_model(self, pool, name: str, prompts: list[Prompt], k: int | None = None, seed: int = 0,
                     tag: SampleTag = POLICY_SAMPLES, journal=None) -> list[Candidate]:
        """k samples per prompt from model ``name`` (a pool name), labelled by ``tag``."""
        return self.generate(pool.model(name, self.dtype), pool.tokenizer(name), prompts, k, seed, tag, journal)

    def sampling_params(self) -> dict:
        """What the samples depend on (cache keys). ``model_defaults: ignored``: samples do not read
        the model's generation_config (records sampled when they did are not reused)."""
        return {**self.distribution(), "dtype": self.dtype, "model_defaults": "ignored"}

    def distribution(self) -> dict:
        """The sampling parameters recorded on every candidate (``Candidate.sampling``)."""
        return {"temperature": float(self.temperature), "top_p": float(self.top_p), "top_k": int(self.top_k),
                "max_new_tokens": int(self.max_new_tokens)}

    def generation_config(self, tokenizer, eos_ids: list[int]):
        """A clean GenerationConfig, every processor off: ``generate`` picks the highest score, and
        ``GumbelSampler`` (passed beside it) makes that a draw from this generator's distribution."""
        from transformers import GenerationConfig

        return GenerationConfig(do_sample=False, max_new_tokens=self.max_new_tokens,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids,
                                **{k: v for k, v in _NEUTRAL.items() if v is not None
                                   and k not in ("temperature", "top_p", "top_k")})  # unused without do_sample

    def sampler(self):
        return GumbelSampler(self.temperature, self.top_k, self.top_p)

    @torch.no_grad()
    def generate(self, model, tokenizer, prompts: list[Prompt], k: int | None = None, seed: int = 0,
                 tag: SampleTag = POLICY_SAMPLES, journal=None) -> list[Candidate]:
        """k samples per prompt, in prompt order, labelled by ``tag``. ``journal``: skip the batches it
        holds, record the others."""
        model_id, source, desc = tag
        k = k or self.num_candidates
        prefix = [chat_prefix_ids(tokenizer, p.messages) for p in prompts]
        jobs = [(q, i) for q in bucketed(prefix) for i in range(k)]  # (prompt index, candidate index)
        eos_ids = {tokenizer.eos_token_id}
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token")
        device = next(model.parameters()).device
        config = self.generation_config(tokenizer, list(eos_ids))
        sampling = self.distribution()
        _report_ignored(model, model_id or self.model_name)
        out: list[Candidate] = []
        bar = progress.bar(total=len(jobs), desc=desc, unit="sample")
        for b, s in enumerate(range(0, len(jobs), self.batch_size)):
            batch = jobs[s : s + self.batch_size]
            items = [[prompts[q].id, i] for q, i in batch]
            done = journal.lookup(b, items) if journal is not None else None
            if done is not None:  # finished before an interruption
                out += [Candidate.from_dict(r) for r in done]
                bar.update(len(batch))
                continue
            input_ids, attn, _ = left_pad([prefix[q] for q, _ in batch], tokenizer.pad_token_id)
            width = input_ids.shape[1]
            cache = _prompt_cache(model, [q for q, _ in batch], prefix, tokenizer.pad_token_id)
            torch.manual_seed(seed * 1_000_003 + b)
            with _only(model, config):
                gen = model.generate(input_ids=input_ids.to(device), attention_mask=attn.to(device),
                                     generation_config=config, logits_processor=[self.sampler()], **cache)
            new = gen[:, width:].cpu()
            made = []
            for r, (q, i) in enumerate(batch):
                p, ids = prompts[q], new[r].tolist()
                n, finished = len(ids), False
                for t, tid in enumerate(ids):
                    if tid in eos_ids:
                        n, finished = t + 1, True
                        break
                text = tokenizer.decode(ids[:n], skip_special_tokens=True).strip()
                made.append(Candidate(p.id, i, text, n, finished, model_id, source, token_ids=ids[:n],
                                      sampling=dict(sampling)))
            if journal is not None:
                journal.append(b, items, [c.to_dict() for c in made])
            out += made
            bar.update(len(batch))
        bar.close()
        back = sorted(range(len(jobs)), key=lambda j: jobs[j])  # prompt order, then candidate index
        return [out[j] for j in back]


class GumbelSampler:
    """A logits processor that turns ``generate``'s greedy pick into a draw from softmax(logits / T)
    truncated by top-k and top-p (transformers' rule, ``rlaif.scoring.truncate_logits``): it adds
    Gumbel noise -log(-log U), U ~ Uniform[0, 1), to every score, and the argmax of logits plus
    Gumbel noise is distributed as the softmax (the Gumbel-max trick). The draws come from torch's
    global generator, seeded per batch. On a 2-core CPU ``torch.multinomial`` over SmolLM2's 49,152
    tokens took 53 ms per step for 32 rows, 29% of generation.

    Uniforms in float32 cap the noise at 16.6 (U = 1 - 2^-24): a token more than 16.6 nats below the
    best can then never win, where exact sampling draws it with probability below e^-16.6 = 6e-8
    times the best token's. U = 0 gives -inf: that token is skipped for the step, with probability
    2^-24."""

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)

    def __call__(self, input_ids, scores: torch.Tensor) -> torch.Tensor:
        from rlaif.scoring import truncate_logits

        z = scores.float()
        if self.temperature != 1.0:
            z = z / self.temperature
        if self.top_k or self.top_p < 1.0:
            z = truncate_logits(z, self.top_k, self.top_p)
        u = torch.rand(z.shape, dtype=torch.float32, device=z.device)
        return z - torch.log(-torch.log(u))


@torch.no_grad()
def _prompt_cache(model, rows: list[int], prefix: list[list[int]], pad_id: int) -> dict:
    """``{<cache argument>: cache}`` over all but the last token of each row's prompt, computed once
    per distinct prompt and copied to its rows (the k candidates of a prompt share it), for
    ``generate`` to start from; empty when no prompt repeats in the batch or the model returns no
    cache whose rows can be selected. The prompts are left-padded exactly as ``generate``'s input
    is, so the cache covers its first columns."""
    distinct = list(dict.fromkeys(rows))
    if len(distinct) == len(rows) or min(len(prefix[q]) for q in distinct) < 2:
        return {}
    # each prompt but its last token, left-padded: the first columns of generate's padded input
    pre = _prefix_pass(model, pad_id, prefix, [(len(prefix[q]) - 1, [q]) for q in distinct])
    if pre is None:
        return {}
    cache, device = pre.cache, next(model.parameters()).device
    where = {q: i for i, q in enumerate(distinct)}
    cache.batch_select_indices(torch.tensor([where[q] for q in rows], device=device))
    return {_cache_argument(model): cache}


def bucketed(prefix: list[list[int]]) -> list[int]:
    """Prompt indices, longest prompt first (ties in their given order): a batch then holds prompts of
    similar length, so left padding stays short."""
    return sorted(range(len(prefix)), key=lambda n: -len(prefix[n]))


@contextmanager
def _only(model, config):
    """``model.generate`` fills every setting left unset from ``model.generation_config``: swap that
    for the clean one while sampling (on the base model under a PEFT wrapper)."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved, lm.generation_config = lm.generation_config, config
    try:
        yield
    finally:
        lm.generation_config = saved


_reported: set[str] = set()


def _report_ignored(model, name: str) -> None:
    """Log once per model the sampling settings its saved generation_config has that are not used."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    own = getattr(lm, "generation_config", None)
    if own is None or name in _reported:
        return
    _reported.add(name)
    ignored = {k: v for k, neutral in _NEUTRAL.items() if (v := getattr(own, k, None)) not in (None, neutral)}
    if ignored:
        log.info("%s: its generation_config sets %s; sampling ignores them and uses only the generator's "
                 "temperature / top_p / top_k", name, ignored)
