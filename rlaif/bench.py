"""``rlaif-bench``: rlaif's own stages timed side by side with the plainest code that does the same work.

Each row pairs an rlaif stage with a baseline, both run in this process on the same model, data
and settings, alternating (baseline, rlaif, baseline, rlaif, ...) so that load on the machine
hits both alike; the best of ``--repeats`` runs counts. ``ratio`` is baseline time / rlaif time:
above 1, rlaif is faster. The baselines:

* ``judge ... vs bare forward``: the same token sequences (prefix + response, as the judge
  builds them) tokenized beforehand, sorted by length, left-padded in batches of the judge's
  batch size and passed through ``model(input_ids, attention_mask)`` once. Nothing a judge could
  do is cheaper, so this is the ceiling for judge throughput.
* ``judge ... vs naive``: one unbatched full-sequence forward per (instruction, response) for the
  contrastive judge, per order for the pairwise judge; no batching, no prefix reuse. (rlaif
  does not reuse shared prefixes through the KV cache yet; the row shows what it gains today.)
* ``generate vs model.generate``: a loop over the same batches calling ``model.generate`` with the
  generator's temperature / top-p / top-k / max_new_tokens and the same per-batch seeds.
  ``generate vs vLLM`` runs only where ``import vllm`` works.
* ``dpo step vs TRL``: a minimal ``DPOTrainer`` script (same pairs, beta, batch size, learning
  rate, max length, precision); the step time is the Trainer's own ``train_runtime`` / steps.
* ``ppo ...``: one PPO iteration of rlaif's own implementation split into sampling (the policy's
  ``generate``), the rest of the rollout (log-probs and values), scoring (the judge) and update;
  there is no other PPO to compare with, so these rows have no baseline.
* ``matmul``: the measured peak, a large square matmul in the chosen dtype (rlaif/precision.py)
  and in float32. Each stage's ``peak`` column is its achieved FLOP/s over that peak, with 2 x
  parameters FLOPs per forward token and 6 x parameters per trained token, tokens counted
  without padding.
* ``--quickstart``: runs ``rlaif`` (with the given overrides) in a subprocess and reads its
  per-stage times from summary.json and its peak RSS; its compute floor is an estimate of the
  FLOPs its work needs (from the run's records) over the peak.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SIZES = {  # per --sizes: prompts judged x responses each, generation prompts x k, DPO pairs, PPO rollout
    "small": {"judge_prompts": 4, "judge_k": 2, "gen_prompts": 2, "gen_k": 2, "max_new_tokens": 8, "dpo_pairs": 8,
              "dpo_batch": 4, "ppo_batch": 4, "ppo_iters": 1, "matmul_n": 256},
    "default": {"judge_prompts": 16, "judge_k": 4, "gen_prompts": 8, "gen_k": 4, "max_new_tokens": 40,
                "dpo_pairs": 16, "dpo_batch": 8, "ppo_batch": 8, "ppo_iters": 1, "matmul_n": 1024},
}
SECTIONS = ("matmul", "judge", "generate", "dpo", "ppo")
WORDS = ("the film is a warm and moving story with a cast that gives every scene real life and the score "
         "lifts it further while the pacing drags in the middle and the ending feels rushed and cheap").split()


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn):
    _sync()
    t = time.perf_counter()
    out = fn()
    _sync()
    return time.perf_counter() - t, out


def alternate(fns: dict, repeats: int) -> dict:
    """Best time and last result of each callable, run in turn ``repeats`` times (first listed first)."""
    best, results = {k: math.inf for k in fns}, {}
    for _ in range(repeats):
        for name, fn in fns.items():
            dt, results[name] = _timed(fn)
            best[name] = min(best[name], dt)
    return {k: (best[k], results[k]) for k in fns}


def row(name, what, rlaif_s, baseline_s=None, unit=None, amount=None, flops=None, peak=None, note="") -> dict:
    """One table row. ``amount`` of ``unit`` (tokens, samples, steps) done per run gives the rates;
    ``flops`` per rlaif run over ``peak`` FLOP/s gives the achieved fraction of the machine's peak."""
    r = {"name": name, "what": what, "rlaif_s": rlaif_s, "baseline_s": baseline_s, "unit": unit,
         "rlaif_rate": amount / rlaif_s if amount else None,
         "baseline_rate": amount / baseline_s if amount and baseline_s else None,
         "ratio": baseline_s / rlaif_s if baseline_s else None,
         "peak_fraction": flops / rlaif_s / peak if flops and peak else None, "note": note}
    return r


# ---------------------------------------------------------------------------------------- matmul
def matmul_gflops(dtype, n: int, reps: int = 3) -> float:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = torch.randn(n, n, device=dev).to(dtype), torch.randn(n, n, device=dev).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b)[0] for _ in range(reps))
    return 2 * n**3 / best / 1e9


def bench_matmul(sizes, dtype_name: str) -> tuple[float, list[dict]]:
    """(peak FLOP/s in the chosen dtype, rows)."""
    from rlaif.models import DTYPES

    n = sizes["matmul_n"] * (4 if torch.cuda.is_available() else 1)
    chosen = matmul_gflops(DTYPES[dtype_name], n)
    rows = [row(f"matmul {dtype_name}", f"{n}x{n} matmul, the peak used below", 2 * n**3 / chosen / 1e9,
                unit="GFLOP", amount=2 * n**3 / 1e9)]
    if dtype_name != "float32":
        f32 = matmul_gflops(torch.float32, n)
        rows.append(row("matmul float32", f"{n}x{n} matmul", 2 * n**3 / f32 / 1e9, unit="GFLOP", amount=2 * n**3 / 1e9))
    return chosen * 1e9, rows


# ---------------------------------------------------------------------------------------- data
def prompts(n: int, offset: int = 0):
    from rlaif.types import Prompt

    path = Path(__file__).parent / "data" / "sentiment" / "movie_openings.jsonl"
    items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = []
    for i in range(n):
        it = items[(offset + i) % len(items)]
        out.append(Prompt(id=it["id"], text=it["text"], split="train",
                          messages=[{"role": "user", "content": f"Continue this movie review: {it['text']}"}]))
    return out


def response(i: int) -> str:
    """A deterministic response of 8 to 38 words."""
    n = 8 + (i * 7) % 31
    return " ".join(WORDS[(i + j * 3) % len(WORDS)] for j in range(n)) + "."


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------- judges
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


def bench_judges(pool, model_name: str, dtype: str, sizes, repeats: int, peak: float | None) -> list[dict]:
    from rlaif.criteria import load_criterion
    from rlaif.judges.contrastive import ContrastiveJudge
    from rlaif.judges.pairwise import PairwiseJudge
    from rlaif.scoring import chat_prefix_ids, text_ids

    crit = load_criterion("positive_sentiment")
    tok, model = pool.tokenizer(model_name), pool.model(model_name, dtype)
    P = n_params(model)
    ps = prompts(sizes["judge_prompts"])
    flat_p = [p for p in ps for _ in range(sizes["judge_k"])]
    flat_r = [response(i) for i in range(len(flat_p))]
    rows = []

    judge = ContrastiveJudge(crit, pool, model_name, dtype)
    chats = [judge._messages(ins, p) for ins in judge.instructions(ps[0]) for p in flat_p]
    conts = flat_r * 2
    seqs = [chat_prefix_ids(tok, c) + text_ids(tok, r) for c, r in zip(chats, conts, strict=True)]
    tokens = sum(map(len, seqs))
    res = alternate({
        "bare": lambda: bare_forward(model, tok.pad_token_id, seqs, judge.backend.batch_size),
        "naive": lambda: [naive_sequence_logprob(model, tok, c, r) for c, r in zip(chats, conts, strict=True)],
        "rlaif": lambda: judge.score(flat_p, flat_r),
    }, repeats)
    t, flops = res["rlaif"][0], 2 * P * tokens
    rows.append(row("judge contrastive vs bare forward", f"{len(seqs)} sequences, {tokens} tokens", t, res["bare"][0],
                    "tok", tokens, flops, peak))
    rows.append(row("judge contrastive vs naive", "one unbatched forward per (instruction, response)", t,
                    res["naive"][0], "tok", tokens, flops, peak, note="no shared-prefix KV reuse yet"))

    pj = PairwiseJudge(crit, pool, model_name, dtype)
    a, b = flat_r[0::2], flat_r[1::2]
    pp = flat_p[0::2]
    pchats = [pj.render(p, x, y) for p, x, y in zip(pp, a, b, strict=True)]
    pchats += [pj.render(p, y, x) for p, x, y in zip(pp, a, b, strict=True)]
    option_ids = pj.backend.option_token_ids(list(pj.answer_tokens))
    pseqs = [chat_prefix_ids(tok, c) for c in pchats]
    ptokens = sum(map(len, pseqs))
    res = alternate({
        "bare": lambda: bare_forward(model, tok.pad_token_id, pseqs, pj.backend.batch_size),
        "naive": lambda: [naive_next_token(model, tok, c, option_ids) for c in pchats],
        "rlaif": lambda: pj.compare(pp, a, b),
    }, repeats)
    t, flops = res["rlaif"][0], 2 * P * ptokens
    rows.append(row("judge pairwise vs bare forward", f"{len(pseqs)} comparisons (both orders), {ptokens} tokens", t,
                    res["bare"][0], "tok", ptokens, flops, peak))
    rows.append(row("judge pairwise vs naive", "one unbatched forward per order", t, res["naive"][0], "tok", ptokens,
                    flops, peak, note="no shared-prefix KV reuse yet"))
    return rows


# ---------------------------------------------------------------------------------------- generation
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


def bench_generate(pool, model_name: str, dtype: str, sizes, repeats: int, peak: float | None) -> list[dict]:
    from rlaif.generators.hf import HFGenerator
    from rlaif.scoring import chat_prefix_ids

    gen = HFGenerator(model_name, num_candidates=sizes["gen_k"], max_new_tokens=sizes["max_new_tokens"], dtype=dtype)
    tok, model = pool.tokenizer(model_name), pool.model(model_name, dtype)
    ps = prompts(sizes["gen_prompts"], offset=20)
    res = alternate({"plain": lambda: plain_generate(model, tok, ps, gen.num_candidates, gen),
                     "rlaif": lambda: gen.generate(model, tok, ps, desc="bench generate")}, repeats)
    cands = res["rlaif"][1]
    new = sum(len(c.token_ids) for c in cands)
    prompt_tokens = sum(len(chat_prefix_ids(tok, p.messages)) for p in ps) * gen.num_candidates
    flops = 2 * n_params(model) * (prompt_tokens + new)
    n = len(cands)
    rows = [row("generate vs model.generate", f"{n} samples, <= {gen.max_new_tokens} new tokens, batch {gen.batch_size}",
                res["rlaif"][0], res["plain"][0], "sample", n, flops, peak,
                note=f"{new} / {res['plain'][1]} tokens generated (rlaif / plain)")]
    if importlib.util.find_spec("vllm") is not None:  # an optional extra: looked up, not imported
        note = "vLLM is installed; its comparison is not implemented in this benchmark"
    else:
        note = "vLLM not installed"
    rows.append(row("generate vs vLLM", "the same sampling with vLLM", res["rlaif"][0], None, "sample", n, note=note))
    return rows


# ---------------------------------------------------------------------------------------- DPO
def dpo_pairs(n: int):
    from rlaif.types import PreferencePair

    out = []
    for i, p in enumerate(prompts(n, offset=40)):
        out.append(PreferencePair(prompt=p.messages, chosen=[{"role": "assistant", "content": response(2 * i)}],
                                  rejected=[{"role": "assistant", "content": response(2 * i + 1)}], prompt_id=p.id,
                                  chosen_index=0, rejected_index=1, chosen_score=1.0, rejected_score=0.0, margin=1.0,
                                  judge="bench", criterion="positive_sentiment"))
    return out


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
                     precompute_ref_log_probs=opt.precompute_ref_log_probs, save_strategy="no", logging_steps=1, bf16=opt.mixed_precision == "bf16",
                     fp16=opt.mixed_precision == "fp16", use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    return DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok).train().metrics["train_runtime"]


def bench_dpo(pool, model_name: str, P: int, sizes, repeats: int, peak32: float | None,
              peak: float | None) -> list[dict]:
    from rlaif.optimizers.base import TrainContext
    from rlaif.optimizers.dpo import DPOOptimizer
    from rlaif.scoring import chat_prefix_ids, text_ids

    path, tok = pool.resolve(model_name).path, pool.tokenizer(model_name)
    pairs = dpo_pairs(sizes["dpo_pairs"])
    opt = DPOOptimizer(learning_rate=1e-5, epochs=1, batch_size=sizes["dpo_batch"], dtype="auto",
                       mixed_precision="auto", save_steps=None, logging_steps=1)
    steps = math.ceil(len(pairs) / opt.batch_size) * opt.epochs
    runtimes: dict[str, list[float]] = {"rlaif": [], "trl": []}  # the Trainer's train_runtime of every run
    with tempfile.TemporaryDirectory() as tmp:
        def ours():
            ctx = TrainContext(policy_path=path, output_dir=Path(tmp) / "rlaif", seed=0, prompts=[], pairs=pairs)
            runtimes["rlaif"].append(opt.train(ctx)["train/train_runtime"])

        res = alternate({"trl": lambda: runtimes["trl"].append(trl_dpo(path, pairs, opt, str(Path(tmp) / "trl"))),
                         "rlaif": ours}, repeats)
    best = {k: min(v) for k, v in runtimes.items()}
    tokens = sum(len(chat_prefix_ids(tok, p.prompt)) * 2 + len(text_ids(tok, p.chosen[0]["content"]))
                 + len(text_ids(tok, p.rejected[0]["content"])) + 2 for p in pairs)
    flops = (6 * P * tokens * opt.epochs + 2 * P * tokens) / steps  # per step; the reference pass spread over steps
    use_peak = peak if opt.mixed_precision != "no" else peak32
    return [row("dpo step vs TRL", f"{len(pairs)} pairs, batch {opt.batch_size}, {steps} steps (train_runtime / steps)",
                best["rlaif"] / steps, best["trl"] / steps, "step", 1, flops, use_peak,
                note=f"whole call incl. load/save: rlaif {res['rlaif'][0]:.1f}s, TRL {res['trl'][0]:.1f}s")]


# ---------------------------------------------------------------------------------------- PPO
def bench_ppo(pool, model_name: str, dtype: str, P: int, sizes, peak32: float | None,
              peak: float | None) -> list[dict]:
    from rlaif.criteria import load_criterion
    from rlaif.judges.contrastive import ContrastiveJudge
    from rlaif.optimizers.base import TrainContext
    from rlaif.optimizers.ppo import PPOOptimizer, _PPORun

    judge = ContrastiveJudge(load_criterion("positive_sentiment"), pool, model_name, dtype)
    B, iters = sizes["ppo_batch"], sizes["ppo_iters"]
    opt = PPOOptimizer(total_episodes=B * iters, rollout_batch_size=B, save_every=None, progress_bar=False)
    peak32 = peak if opt.mixed_precision != "no" else peak32  # autocast computes in the chosen dtype
    times = {"sample": 0.0, "rollout": 0.0, "score": 0.0, "update": 0.0}
    tokens = {"sample": 0, "update": 0}

    def reward(ps, texts):
        return [math.nan if s is None else s for s in judge.score(ps, texts)]

    with tempfile.TemporaryDirectory() as tmp:
        ctx = TrainContext(policy_path=pool.resolve(model_name).path, output_dir=Path(tmp), seed=0,
                           prompts=prompts(B * iters, offset=60), reward=reward, max_new_tokens=sizes["max_new_tokens"])
        run = _PPORun(opt, ctx)
        # Timers wrapped around the run's own phases from outside (same objects, same calls).
        setup, rollout, scores, update = run._setup, run._rollout, run._scores, run._update

        def timed(key, fn):
            def wrapped(*a, **kw):
                dt, out = _timed(lambda: fn(*a, **kw))
                times[key] += dt
                return out
            return wrapped

        def _setup():
            setup()
            policy = run.unwrapped.policy
            policy.generate = timed("sample", policy.generate)

        def _rollout(ps):
            ro = rollout(ps)
            n = int(ro.attention_mask.sum())
            tokens["sample"] += n
            tokens["update"] += n * opt.ppo_epochs
            return ro

        run._setup, run._rollout = _setup, timed("rollout", _rollout)
        run._scores, run._update = timed("score", scores), timed("update", update)
        run.run()
    times["rollout"] -= times["sample"]  # the rest of the rollout: log-probs, reference, values
    total = sum(times.values()) / iters
    what = f"rollout batch {B}, <= {sizes['max_new_tokens']} new tokens, {opt.ppo_epochs} epochs, per iteration"
    return [row("ppo iteration", what, total, unit="it", amount=1),
            row("ppo sampling", "policy.generate", times["sample"] / iters, flops=2 * P * tokens["sample"] / iters,
                peak=peak32),
            row("ppo rollout forwards", "log-probs, reference and values", times["rollout"] / iters,
                flops=2 * P * 2 * tokens["sample"] / iters, peak=peak32),
            row("ppo scoring", "the contrastive judge", times["score"] / iters),
            row("ppo update", "clipped surrogate + value loss, backward, Adam", times["update"] / iters,
                flops=6 * P * tokens["update"] / iters, peak=peak32)]


# ---------------------------------------------------------------------------------------- quickstart
def bench_quickstart(overrides: list[str], tok, P: int, peak: float | None) -> list[dict]:
    """Run ``rlaif`` once; per-stage rows from its summary.json, peak RSS of the child process."""
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "rlaif", f"hydra.run.dir={tmp}/run", *overrides],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode:
            raise RuntimeError(f"rlaif {' '.join(overrides)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        summary = json.loads(Path(tmp, "run", "summary.json").read_text())
        flops = quickstart_flops(Path(tmp, "run"), tok, P)
    rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # kB on Linux
    rows = [row(f"quickstart {k[5:-2]}", "stage wall time", float(v)) for k, v in summary.items()
            if k.startswith("time/") and k != "time/total_s" and float(v) > 0]
    total = float(summary.get("time/total_s", wall))
    floor = flops / peak if peak and flops else None
    rows.append(row("quickstart total", f"peak RSS {rss_gb:.2f} GB; compute floor "
                    + (f"{floor:.1f}s ({flops / 1e12:.2f} TFLOP, estimate)" if floor else "n/a"),
                    total, flops=flops, peak=peak, note=f"{total / floor:.1f}x its floor" if floor else ""))
    return rows


def quickstart_flops(run_dir: Path, tok, P: int, epochs: int = 2) -> float:
    """An estimate of the FLOPs the run's recorded work needs, from its records: each sampled
    response with token ids (candidates, evaluation samples) costs 2P per prompt and response
    token to sample and, judged under two instructions, 4P more; each preference pair 6P per
    trained token per epoch plus 2P for the reference pass."""
    from rlaif.scoring import chat_prefix_ids, text_ids

    def records(name):
        for f in run_dir.glob(f"{name}*.jsonl"):
            for line in f.read_text().splitlines():
                if line.strip():
                    yield json.loads(line)

    prompt_len = {r["id"]: len(chat_prefix_ids(tok, r["messages"])) for r in records("prompts") if "messages" in r}
    total = 0.0
    for f in run_dir.glob("*.jsonl"):
        for line in f.read_text().splitlines():
            rec = json.loads(line) if line.strip() else None
            if not isinstance(rec, dict):
                continue
            if rec.get("token_ids"):
                total += 6 * P * (len(rec["token_ids"]) + prompt_len.get(rec.get("prompt_id"), 0))
            elif "chosen" in rec and "rejected" in rec:
                n = (2 * len(chat_prefix_ids(tok, rec["prompt"])) + len(text_ids(tok, rec["chosen"][0]["content"]))
                     + len(text_ids(tok, rec["rejected"][0]["content"])))
                total += (6 * epochs + 2) * P * n
    return total


# ---------------------------------------------------------------------------------------- output
def _fmt(x, spec=".3g") -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    head = f"{'row':<36} {'rlaif':>10} {'baseline':>10} {'ratio':>7} {'peak':>7}  what"
    lines = [head, "-" * len(head)]
    for r in rows:
        def rate(v):
            return "-" if v is None else f"{v:.3g}s"

        pk = "-" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.1f}%"
        what = r["what"] + (f" [{r['note']}]" if r["note"] else "")
        lines.append(f"{r['name']:<36} {rate(r['rlaif_s']):>10} {rate(r['baseline_s']):>10} {_fmt(r['ratio'], '.2f'):>7}"
                     f" {pk:>7}  {what}")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="rlaif-bench", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="embedded model name or a local model folder")
    ap.add_argument("--sizes", choices=sorted(SIZES), default="default")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--quickstart", nargs="*", metavar="OVERRIDE", default=None,
                    help="also run the quickstart (minutes) with these Hydra overrides")
    ap.add_argument("--out", default="bench.json")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs per side; the best counts")
    args = ap.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.only if s not in SECTIONS]
    if bad:
        ap.error(f"--only: unknown section(s) {bad}; choose from {','.join(SECTIONS)}")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    return args


def main(argv=None) -> int:
    before = os.environ.get("TQDM_DISABLE")
    os.environ.setdefault("TQDM_DISABLE", "1")  # bars off on both sides alike, for this command only
    try:
        return _bench(argv)
    finally:
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)


def _bench(argv) -> int:
    from rlaif import precision
    from rlaif.models import ModelPool

    args = parse_args(argv)
    sizes, p = SIZES[args.sizes], precision.detect()
    print(f"rlaif-bench: {args.model}, sizes {args.sizes}, dtype {p.dtype} ({p.reason}), "
          f"{torch.get_num_threads()} threads, repeats {args.repeats}", flush=True)
    pool, rows = ModelPool(), []
    peak, rows_m = bench_matmul(sizes, p.dtype)
    peak32 = peak if p.dtype == "float32" else matmul_gflops(torch.float32, sizes["matmul_n"]) * 1e9
    P = n_params(pool.model(args.model, p.dtype))
    if "matmul" in args.only:
        rows += rows_m
    if "judge" in args.only:
        rows += bench_judges(pool, args.model, p.dtype, sizes, args.repeats, peak)
    if "generate" in args.only:
        rows += bench_generate(pool, args.model, p.dtype, sizes, args.repeats, peak)
    if "dpo" in args.only:
        rows += bench_dpo(pool, args.model, P, sizes, args.repeats, peak32, peak)
    if "ppo" in args.only:
        rows += bench_ppo(pool, args.model, p.dtype, P, sizes, peak32, peak)
    if args.quickstart is not None:
        rows += bench_quickstart(args.quickstart, pool.tokenizer(args.model), P, peak)
    print(table(rows), flush=True)
    out = {"model": args.model, "sizes": args.sizes, "precision": p.as_dict(), "peak_flops": peak,
           "peak_flops_float32": peak32, "threads": torch.get_num_threads(), "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"rlaif-bench: wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
