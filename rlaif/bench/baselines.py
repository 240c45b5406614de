"""The baselines: the plainest code that does the work of an rlaif stage.

A bare batched forward and unbatched naive forwards for the judges, a ``model.generate`` loop for
the generator, a minimal TRL ``DPOTrainer`` script for DPO. Each is run on the same model, data
and settings as the rlaif stage it is compared with (``rlaif.bench.rows``).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def bare_forward(model, pad_id: int, seqs: list[list[int]], batch_size: int) -> None:
    from rlaif.scoring import left_pad

    dev = next(model.parameters()).device
    seqs = sorted(seqs, key=len)
    for s in range(0, len(seqs), batch_size):
        ids, attn, _ = left_pad(seqs[s : s + batch_size], pad_id)
        model(input_ids=ids.to(dev), attention_mask=attn.to(dev))


@torch.no_grad()
def naive_sequence_logprob(model, tok, messages, text: str) -> float:
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prefix = tok(ids, add_special_tokens=False)["input_ids"]
    cont = tok(text, add_special_tokens=False)["input_ids"]
    full = torch.tensor([prefix + cont], device=next(model.parameters()).device)
    logp = torch.log_softmax(model(input_ids=full).logits[0, :-1].float(), -1)
    return float(logp[len(prefix) - 1 :].gather(-1, full[0, len(prefix) :, None]).sum())


@torch.no_grad()
def naive_next_token(model, tok, messages, option_ids: list[int]) -> list[float]:
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]], device=next(model.parameters()).device)
    logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    return [float(logp[t]) for t in option_ids]

@torch.no_grad()
def plain_generate(model, tok, prompt_list, k: int, gen, seed: int = 0) -> int:
    """The baseline: batches of k copies per prompt through ``model.generate``; returns tokens generated."""
    jobs = [p for p in prompt_list for _ in range(k)]
    tok.padding_side = "left"
    dev, made = next(model.parameters()).device, 0
    for b, s in enumerate(range(0, len(jobs), gen.batch_size)):
        texts = [tok.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False)
                 for p in jobs[s : s + gen.batch_size]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
        torch.manual_seed(seed * 1_000_003 + b)
        out = model.generate(**enc, do_sample=True, temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k,
                             max_new_tokens=gen.max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        for r in out[:, enc["input_ids"].shape[1] :].tolist():
            made += r.index(tok.eos_token_id) + 1 if tok.eos_token_id in r else len(r)
    return made

def trl_dpo(path: str, pairs, opt, out_dir: str) -> float:
    """The baseline: the minimal TRL DPO script. Returns the Trainer's train_runtime."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    data = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])
    args = DPOConfig(output_dir=out_dir, beta=opt.beta, learning_rate=opt.learning_rate, num_train_epochs=opt.epochs,
                     per_device_train_batch_size=opt.batch_size, max_length=opt.max_length, report_to=[],
                     precompute_ref_log_probs=opt.precompute_ref_log_probs, save_strategy="no", logging_steps=1,
                     gradient_checkpointing=opt.gradient_checkpointing,  # like for like
                     bf16=opt.mixed_precision == "bf16",
                     fp16=opt.mixed_precision == "fp16", use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    return DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok).train().metrics["train_runtime"]
