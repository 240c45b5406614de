"""Batched sampling with transformers.

k candidates per prompt; every batch is seeded from (seed, batch number), so the same config
and seed give the same candidates on the same machine. That is also what makes generation
resumable: with a ``journal`` (rlaif/journal.py) each finished batch is recorded, and a rerun
reads finished batches back instead of sampling them -- the batches it still samples get the
same seeds as in an uninterrupted run, so the result is identical. Keep it that way: nothing
may make a batch depend on the batches before it (no RNG state carried across batches).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from rlaif.scoring import chat_prefix_ids, left_pad
from rlaif.types import Candidate, Prompt


class HFGenerator:
    def __init__(self, model: str, num_candidates: int = 4, max_new_tokens: int = 48, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, batch_size: int = 32, dtype: str = "auto", **_unused):
        self.model_name = model
        self.num_candidates = num_candidates
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.batch_size = batch_size
        self.dtype = dtype

    def identity(self, pool) -> str:
        return pool.resolve(self.model_name).identity

    def sample(self, pool, prompts: list[Prompt], k: int | None = None, seed: int = 0, source: str = "policy",
               desc: str = "generate", journal=None) -> list[Candidate]:
        """Sample from the configured model, loaded (once, shared) through the pool."""
        return self.generate(pool.model(self.model_name, self.dtype), pool.tokenizer(self.model_name), prompts, k,
                             seed, self.identity(pool), source, desc, journal=journal)

    def sampling_params(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "dtype": self.dtype}

    @torch.no_grad()
    def generate(self, model, tokenizer, prompts: list[Prompt], k: int | None = None, seed: int = 0,
                 model_id: str = "", source: str = "policy", desc: str = "generate", journal=None) -> list[Candidate]:
        """k samples per prompt, in prompt order. ``journal``: skip the batches it holds, record the others."""
        k = k or self.num_candidates
        jobs = [(p, i) for p in prompts for i in range(k)]
        eos_ids = {tokenizer.eos_token_id}
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token")
        device = next(model.parameters()).device
        out: list[Candidate] = []
        bar = tqdm(total=len(jobs), desc=desc, unit="sample")
        for b, s in enumerate(range(0, len(jobs), self.batch_size)):
            batch = jobs[s : s + self.batch_size]
            items = [[p.id, i] for p, i in batch]
            done = journal.lookup(b, items) if journal is not None else None
            if done is not None:  # finished before an interruption
                out += [Candidate.from_dict(r) for r in done]
                bar.update(len(batch))
                continue
            input_ids, attn, _ = left_pad([chat_prefix_ids(tokenizer, p.messages) for p, _ in batch],
                                          tokenizer.pad_token_id)
            width = input_ids.shape[1]
            torch.manual_seed(seed * 1_000_003 + b)
            gen = model.generate(
                input_ids=input_ids.to(device), attention_mask=attn.to(device), do_sample=True,
                temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None,
                max_new_tokens=self.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=list(eos_ids),
            )
            new = gen[:, width:].cpu()
            made = []
            for r, (p, i) in enumerate(batch):
                ids = new[r].tolist()
                n, finished = len(ids), False
                for t, tid in enumerate(ids):
                    if tid in eos_ids:
                        n, finished = t + 1, True
                        break
                text = tokenizer.decode(ids[:n], skip_special_tokens=True).strip()
                made.append(Candidate(p.id, i, text, n, finished, model_id, source))
            if journal is not None:
                journal.append(b, items, [c.to_dict() for c in made])
            out += made
            bar.update(len(batch))
        bar.close()
        return out
