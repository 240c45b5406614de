"""Shared fixtures: a tiny randomly initialised chat model built here (no download), and a
composed config pointing the whole pipeline at it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "Continue this movie review: the film is wonderful, moving and beautifully acted.",
    "A dull, boring and terrible movie with awful pacing and weak writing.",
    "Which response is better? Answer with 1 or 2.",
    "You are a film critic who loved this movie. You are a film critic who hated it.",
    "The director, the cast and the score make this a great night at the cinema.",
] * 20


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer, saved as a local HF folder (safetensors)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<|im_end|>",
                                  bos_token=None, additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture
def tiny_overrides(tiny_model, tmp_path) -> list[str]:
    """Overrides that shrink the quickstart to seconds on the tiny model."""
    return [
        f"policy.model={tiny_model}",
        f"cache.dir={tmp_path / 'cache'}",
        "data.num_train=6",
        "data.num_eval=3",
        "generator.num_candidates=3",
        "generator.max_new_tokens=8",
        "generator.dtype=float32",
        "judge.dtype=float32",
        "optimizer.epochs=1",
        "optimizer.batch_size=4",
        "optimizer.learning_rate=1e-3",
        "optimizer.mixed_precision=no",
        "evaluation.samples_per_prompt=2",
    ]


def compose_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rlaif.config import conf_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.fixture(scope="session")
def sharp_model(tiny_model, tmp_path_factory) -> str:
    """The tiny model with its weight matrices scaled up 10x, saved as another local folder.

    At its initial scale the random model barely attends to context, so a judge's output would
    hardly depend on the instruction or on the order of the responses; scaled, it clearly does,
    and checks against hand computations fail when a judge reads the wrong positions or texts.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        for w in model.parameters():
            if w.dim() > 1:
                w.mul_(10.0)
    out = tmp_path_factory.mktemp("sharp-llama")
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return str(out)


@pytest.fixture
def started_trainers(monkeypatch) -> list:
    """The transformers Trainers whose ``train()`` runs during the test, in order (each then
    trains for real): lets a test read the arguments TRL actually received."""
    from transformers import Trainer

    started, train = [], Trainer.train

    def recorded(self, *args, **kwargs):
        started.append(self)
        return train(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train", recorded)
    return started
