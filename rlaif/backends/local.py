"""Local transformers models as a judge backend (frozen weights from a ModelPool)."""

from __future__ import annotations

import torch

from rlaif.scoring import chat_prefix_ids, continuation_logprobs, left_pad, next_token_logprobs, text_ids


class LocalBackend:
    def __init__(self, pool, model: str, dtype: str = "auto", batch_size: int = 16):
        self.pool, self.model_name, self.dtype, self.batch_size = pool, model, dtype, batch_size

    @property
    def name(self) -> str:
        return self.model_name

    @property
    def identity(self) -> str:
        return self.pool.resolve(self.model_name).identity

    def _lm(self):
        return self.pool.tokenizer(self.model_name), self.pool.model(self.model_name, self.dtype)

    def option_token_ids(self, options: list[str]) -> list[int]:
        return single_token_ids(self.pool.tokenizer(self.model_name), options, self.model_name)

    def next_token_logprobs(self, chats: list[list[dict]], options: list[str],
                            assistant_prefix: str = "") -> list[list[float | None]]:
        tok, model = self._lm()
        ids = self.option_token_ids(options)
        extra = text_ids(tok, assistant_prefix) if assistant_prefix else []
        prefixes = [chat_prefix_ids(tok, c) + extra for c in chats]
        return next_token_logprobs(model, tok.pad_token_id, prefixes, ids, self.batch_size)

    def sequence_logprobs(self, chats: list[list[dict]], continuations: list[str],
                          desc: str | None = None) -> list[tuple[float, int]]:
        tok, model = self._lm()
        prefixes = [chat_prefix_ids(tok, c) for c in chats]
        conts = [text_ids(tok, x) for x in continuations]
        return continuation_logprobs(model, tok.pad_token_id, prefixes, conts, self.batch_size, desc=desc)

    @torch.no_grad()
    def generate(self, chats: list[list[dict]], max_new_tokens: int = 256, temperature: float = 0.0,
                 seed: int = 0) -> list[str | None]:
        tok, model = self._lm()
        out: list[str | None] = []
        for s in range(0, len(chats), self.batch_size):
            input_ids, attn, _ = left_pad([chat_prefix_ids(tok, c) for c in chats[s : s + self.batch_size]],
                                          tok.pad_token_id)
            width = input_ids.shape[1]
            torch.manual_seed(seed + s)
            sample = temperature > 0
            gen = model.generate(input_ids=input_ids, attention_mask=attn, do_sample=sample,
                                 temperature=temperature if sample else None, top_p=None, top_k=None,
                                 max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
            out += [tok.decode(row[width:], skip_special_tokens=True).strip() for row in gen]
        return out

    def accounting(self) -> dict[str, float]:
        return {}


def single_token_ids(tok, options: list[str], model_name: str) -> list[int]:
    """The token id of each answer option; raises if an option is not exactly one token."""
    ids = []
    for o in options:
        enc = tok(o, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise ValueError(f"answer option {o!r} is {len(enc)} tokens for {model_name}'s tokenizer; "
                             "choose single-token answer options")
        ids.append(enc[0])
    return ids
