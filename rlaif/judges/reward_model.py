"""Reward-model judge: a sequence-classification model with one output (e.g. a hub reward model
such as Skywork-Reward-V2) scores the chat-formatted (prompt, response); the score is its logit.
A classifier with several labels (a sentiment model such as siebert/sentiment-roberta-large-english:
NEGATIVE / POSITIVE) scores one of them, ``label`` (its name in the model's config or its index):
by default its log-odds, log p(label) - log(1 - p(label)), which for two labels is the difference
of their logits (``label_score``: ``log_odds`` | ``logit`` | ``probability``).

The criterion is baked into the weights, so no criterion wording is read. Weights are loaded
lazily on first use, from a local folder or hub id through ``rlaif.models.resolve_model``
(safetensors only; ``trust_remote_code`` only when set), and stay frozen (eval mode, no grad).
Tokenizers with a chat template see ``prompt.messages + [assistant response]`` formatted by it;
tokenizers without one (older RMs) get the (question, answer) text pair they were trained on.
Inputs longer than ``max_length`` are truncated from the left: the reward is read at the last
token, which must stay.

A probe reward model (``reward_model.method=probe``, rlaif/optimizers/reward_model.py) is saved with
``rlaif_pooling: response_mean`` in its config: its score is the mean of the head's per-token scores
over the response's tokens (the chat template's closing tokens included) instead of the last token's.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import field_validator

from rlaif.criteria import Criterion
from rlaif.judges.base import Judge, ModelJudgeOptions, with_given
from rlaif.models import load_tokenizer, resolve_model, torch_dtype
from rlaif.options import Count
from rlaif.scoring import chat_prefix_ids
from rlaif.types import Prompt


class RewardModelOptions(ModelJudgeOptions):
    """``judge=reward_model``: every option, documented with its default in conf/judge/reward_model.yaml."""

    CONF: ClassVar[str] = "judge/reward_model"
    max_length: Count
    trust_remote_code: bool
    device: str  # auto = cuda when available, else cpu
    label: str | int | None  # a multi-label classifier: the label scored (name or index); null: a num_labels=1 model
    label_score: Literal["log_odds", "logit", "probability"]

    @field_validator("model")
    @classmethod
    def _named(cls, v):
        if not v:
            raise ValueError("the reward_model judge needs a local folder or hub id of a sequence-classification "
                             "reward model")
        return v


class RewardModelJudge(Judge):
    """Keyword arguments override the YAML's defaults (``RewardModelOptions``); ``model`` may also come
    positionally (after the criterion). Without a criterion (``data.gold``) it is named after the model."""

    kind = "reward_model"
    pointwise = True
    Options = RewardModelOptions

    def __init__(self, criterion: Criterion | None = None, model: str | None = None, pool=None, *,
                 name: str | None = None, **options):
        # No criterion: a gold labeller (``data.gold``), built without the run's criterion.
        super().__init__(criterion or Criterion("reward_model", "the reward model's score"), name)
        self.options = o = RewardModelOptions.build(with_given(options, model=model), "judge")
        self.model_name, self.pool, self.dtype = o.model, pool, o.dtype
        self.batch_size, self.max_length, self.trust_remote_code = o.batch_size, o.max_length, o.trust_remote_code
        self.device, self.label, self.label_score = o.device, o.label, o.label_score
        self._tok = self._model = self._resolved = None
        self._label_index: int | None = None
        self._pooling = "last"

    @property
    def name(self) -> str:
        return self._name or f"reward_model:{self.model_name}"

    def _resolve(self):
        if self._resolved is None:
            self._resolved = (self.pool.resolve(self.model_name) if self.pool is not None
                              else resolve_model(self.model_name))
        return self._resolved

    @property
    def identity(self) -> str:
        """The reward model's resolved identity (path + weight hash, or hub id + revision)."""
        return self._resolve().identity

    def _load(self):
        if self._model is None:
            from transformers import AutoModelForSequenceClassification

            resolved = self._resolve()
            tok = load_tokenizer(resolved.path, self.trust_remote_code)
            tok.truncation_side = "left"
            model = AutoModelForSequenceClassification.from_pretrained(
                resolved.path, dtype=torch_dtype(self.dtype), use_safetensors=True,
                trust_remote_code=self.trust_remote_code)
            self._label_index = label_index(model.config, self.label, self.model_name)
            self._pooling = pooling(model, self.model_name)
            if model.config.pad_token_id is None:  # batched scoring finds each row's last token by padding
                model.config.pad_token_id = tok.pad_token_id
            device = self.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            model.to(device)
            model.eval()
            model.requires_grad_(False)
            self._tok, self._model = tok, model
        return self._tok, self._model

    def encode(self, prompt: Prompt, response: str) -> list[int]:
        """Token ids the reward model reads for one (prompt, response) (exposed for tests)."""
        tok, _ = self._load()
        return encode_response(tok, prompt.messages, response, self.max_length, prompt.text)[0]

    def _read(self, logits: torch.Tensor) -> torch.Tensor:
        """Each row's score: the one logit, or the configured label's log-odds, logit or probability."""
        i = self._label_index
        if i is None:
            return logits[:, 0]
        if self.label_score == "logit":
            return logits[:, i]
        logp = torch.log_softmax(logits, dim=-1)[:, i]
        if self.label_score == "probability":
            return logp.exp()
        others = torch.cat([logits[:, :i], logits[:, i + 1:]], dim=-1)  # log(1 - p) = logsumexp(others) - logsumexp(all)
        return logits[:, i] - torch.logsumexp(others, dim=-1)

    @torch.no_grad()
    def score(self, prompts: list[Prompt], responses: list[str]) -> list[float | None]:
        tok, model = self._load()
        pad = model.config.pad_token_id
        device = next(model.parameters()).device
        encoded = [encode_response(tok, p.messages, r, self.max_length, p.text)
                   for p, r in zip(prompts, responses, strict=True)]
        out: list[float | None] = []
        for s in range(0, len(encoded), self.batch_size):
            batch = encoded[s : s + self.batch_size]
            ids, attn = right_pad([x[0] for x in batch], pad)
            ids, attn = ids.to(device), attn.to(device)
            if self._pooling == "response_mean":
                values = response_mean_scores(model, ids, attn, [x[1] for x in batch])
            else:  # the head reads the last non-pad token
                values = self._read(model(input_ids=ids, attention_mask=attn).logits.float()).tolist()
            for v in values:
                out.append(v if v == v and abs(v) != float("inf") else None)
        return out


POOLINGS = ("last", "response_mean")


def pooling(model, model_name: str) -> str:
    """How a loaded reward model's score is read: its config's ``rlaif_pooling`` (absent: ``last``)."""
    kind = getattr(model.config, "rlaif_pooling", None) or "last"
    if kind not in POOLINGS:
        raise ValueError(f"{model_name}: config.json has rlaif_pooling={kind!r}; this version of rlaif reads "
                         f"{' or '.join(POOLINGS)}")
    if kind == "response_mean" and (int(model.config.num_labels) != 1 or not hasattr(model, "score")):
        raise ValueError(f"{model_name}: rlaif_pooling=response_mean needs a one-output model with a `score` head "
                         "(as rlaif's reward_model.method=probe saves)")
    return kind


def encode_response(tok, messages: list[dict], response: str, max_length: int,
                    fallback_text: str = "") -> tuple[list[int], int]:
    """(token ids, index of the response's first token) for one chat-formatted (prompt, response),
    truncated from the left to ``max_length`` tokens. Shared by the judge and the probe trainer, so
    that a probe is trained on exactly the tokens it later scores."""
    if tok.chat_template:
        text = tok.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        head = chat_prefix_ids(tok, list(messages))
        start = 0
        while start < min(len(head), len(ids)) and head[start] == ids[start]:
            start += 1  # the shared prefix: the prompt and the assistant header
    else:
        user = [m["content"] for m in messages if m.get("role") == "user"]
        enc = tok(user[-1] if user else fallback_text, response)
        ids = enc["input_ids"]
        types = enc.get("token_type_ids")
        start = types.index(1) if types and 1 in types else len(tok(user[-1] if user else fallback_text)["input_ids"])
    cut = max(0, len(ids) - max_length)
    start = min(max(0, start - cut), len(ids) - cut - 1)  # at least one token is read
    return ids[cut:], start


def right_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for r, seq in enumerate(seqs):
        ids[r, : len(seq)] = torch.tensor(seq)
        attn[r, : len(seq)] = 1
    return ids, attn


def response_mean_hidden(model, ids: torch.Tensor, attn: torch.Tensor, starts: list[int]) -> torch.Tensor:
    """[batch, hidden] float32: the backbone's last hidden state averaged over each row's response tokens."""
    hidden = model.base_model(input_ids=ids, attention_mask=attn).last_hidden_state.float()
    span = attn.clone()
    for r, s in enumerate(starts):
        span[r, :s] = 0
    span = span.unsqueeze(-1).to(hidden.dtype)
    return (hidden * span).sum(1) / span.sum(1).clamp(min=1)


def response_mean_scores(model, ids: torch.Tensor, attn: torch.Tensor, starts: list[int]) -> list[float]:
    """The head's score of each row's mean response hidden state (= the mean of its per-token scores)."""
    pooled = response_mean_hidden(model, ids, attn, starts)
    return model.score(pooled.to(model.score.weight.dtype)).float()[:, 0].tolist()


def label_index(config, label: str | int | None, model_name: str) -> int | None:
    """The output the judge reads: None for a one-output reward model, else the index of ``label``."""
    n = int(config.num_labels)
    names = {str(v): int(k) for k, v in (getattr(config, "id2label", None) or {}).items()}
    shown = ", ".join(f"{i}={name}" for name, i in sorted(names.items(), key=lambda t: t[1])) or f"0..{n - 1}"
    if label is None:
        if n != 1:
            raise ValueError(f"{model_name} has {n} output labels ({shown}); a reward model has exactly one "
                             "(num_labels=1). For a classifier, set judge.label to the label to score "
                             f"(e.g. judge.label={next(iter(names), 0)})")
        return None
    if isinstance(label, int):
        if not 0 <= label < n:
            raise ValueError(f"judge.label={label}: {model_name} has labels {shown}")
        return label
    if label in names:
        return names[label]
    folded = {k.lower(): i for k, i in names.items()}
    if label.lower() in folded:
        return folded[label.lower()]
    raise ValueError(f"judge.label={label!r} is not a label of {model_name}; its labels: {shown}")
