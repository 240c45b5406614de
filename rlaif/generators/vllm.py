"""Sampling with vLLM (``generator=vllm``).

The same records as the transformers generator (rlaif/generators/hf.py): k candidates per prompt,
each with its sampled token ids (EOS included when produced), its decoded text, whether it finished
before ``max_new_tokens``, and the sampling parameters. Prompts are the same token ids (the
model's chat template, ``chat_prefix_ids``), and vLLM is told to ignore the model's saved
generation_config, so the samples come from the distribution that evaluation and training score.

Every candidate is its own request seeded from (seed, prompt id, candidate index): its tokens do
not depend on which other requests share a batch. Batches are journaled like the HF generator's,
so a rerun after a kill reads finished batches back and samples only the rest, and gets the same
candidates as an uninterrupted run. vLLM guarantees this for a seeded request on the same
hardware, vLLM version and dtype; GPUs with other batch shapes can still differ in the last bits
of a logit, so exact equality is promised on one machine only.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

from rlaif.generators.hf import POLICY_SAMPLES, SampleTag, SamplingOptions, take_sampling
from rlaif.scoring import chat_prefix_ids
from rlaif.types import Candidate, Prompt


class VLLMGeneratorOptions(SamplingOptions):
    """``generator=vllm``: every option, documented with its default in conf/generator/vllm.yaml."""

    CONF: ClassVar[str] = "generator/vllm"


def request_seed(seed: int, prompt_id: str, index: int) -> int:
    """The seed of one candidate's request: a stable hash of (run seed, prompt id, candidate index)."""
    digest = hashlib.sha256(f"{seed}\0{prompt_id}\0{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class VLLMGenerator:
    """Keyword arguments override the YAML's defaults (``VLLMGeneratorOptions``); ``model`` may also
    come positionally."""

    Options = VLLMGeneratorOptions
    engine = "vllm"

    def __init__(self, model: str | None = None, **options):
        o = take_sampling(self, VLLMGeneratorOptions, model, options)
        self.batch_size = o.batch_size
        self.dtype = o.dtype

    def identity(self, pool) -> str:
        return pool.resolve(self.model_name).identity

    def sampling_params(self) -> dict:
        """What the samples depend on (cache keys)."""
        return {**self.distribution(), "dtype": self.dtype, "engine": "vllm", "model_defaults": "ignored"}

    def distribution(self) -> dict:
        """The sampling parameters recorded on every candidate (``Candidate.sampling``)."""
        return {"temperature": float(self.temperature), "top_p": float(self.top_p), "top_k": int(self.top_k),
                "max_new_tokens": int(self.max_new_tokens)}

    def sample(self, pool, prompts: list[Prompt], k: int | None = None, seed: int = 0, source: str = "policy",
               desc: str = "generate", journal=None) -> list[Candidate]:
        """Sample from the configured model on the pool's vLLM engine for it."""
        return self.sample_model(pool, self.model_name, prompts, k, seed,
                                 SampleTag(self.identity(pool), source, desc), journal)

    def sample_model(self, pool, name: str, prompts: list[Prompt], k: int | None = None, seed: int = 0,
                     tag: SampleTag = POLICY_SAMPLES, journal=None) -> list[Candidate]:
        """k samples per prompt from model ``name`` (a pool name), in prompt order, labelled by ``tag``.
        ``journal``: skip the batches it holds, record the others."""
        from vllm import SamplingParams

        from rlaif import progress
        from rlaif.backends import vllm as engines
        from rlaif.precision import inference_dtype

        model_id, source, desc = tag
        k = k or self.num_candidates
        tok = pool.tokenizer(name)
        llm = None  # started at the first batch that is not journaled: a finished run starts no engine
        jobs = [(p, i) for p in prompts for i in range(k)]
        sampling = self.distribution()
        out: list[Candidate] = []
        bar = progress.bar(total=len(jobs), desc=desc, unit="sample")
        for b, s in enumerate(range(0, len(jobs), self.batch_size)):
            batch = jobs[s : s + self.batch_size]
            items = [[p.id, i] for p, i in batch]
            done = journal.lookup(b, items) if journal is not None else None
            if done is not None:
                out += [Candidate.from_dict(r) for r in done]
                bar.update(len(batch))
                continue
            if llm is None:
                llm = engines.engine(pool, name, inference_dtype(self.dtype))
            params = [SamplingParams(n=1, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                                     max_tokens=self.max_new_tokens, seed=request_seed(seed, p.id, i))
                      for p, i in batch]
            outs = engines.run(llm, [chat_prefix_ids(tok, p.messages) for p, _ in batch], params,
                               f"sampling ({desc})")
            made = []
            for (p, i), o in zip(batch, outs, strict=True):
                c = o.outputs[0]
                ids = list(c.token_ids)
                finished = c.finish_reason == "stop"  # EOS (or the model's stop token), not the length cap
                made.append(Candidate(p.id, i, tok.decode(ids, skip_special_tokens=True).strip(), len(ids), finished,
                                      model_id, source, token_ids=ids, sampling=dict(sampling)))
            if journal is not None:
                journal.append(b, items, [c.to_dict() for c in made])
            out += made
            bar.update(len(batch))
        bar.close()
        return out
