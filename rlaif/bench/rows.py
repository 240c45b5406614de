"""Each benchmark section measured: the rlaif stage beside its baseline, alternating, as table rows.

``bench_matmul`` measures the peak; ``bench_judges``, ``bench_generate``, ``bench_dpo`` and
``bench_ppo`` time rlaif's stages (PPO split into its phases, without a baseline);
``bench_quickstart`` runs ``rlaif`` in a subprocess and reads its stage times back.
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rlaif.bench.baselines import (
    bare_forward,
    naive_next_token,
    naive_sequence_logprob,
    plain_generate,
    trl_dpo,
)
from rlaif.bench.timing import Done, _timed, alternate, matmul_gflops, row
from rlaif.bench.workload import dpo_pairs, n_params, prompts, response


def bench_matmul(sizes, dtype_name: str) -> tuple[float, list[dict]]:
    """(peak FLOP/s in the chosen dtype, rows)."""
    from rlaif.models import DTYPES

    n = sizes["matmul_n"] * (4 if torch.cuda.is_available() else 1)
    chosen = matmul_gflops(DTYPES[dtype_name], n)
    rows = [row(f"matmul {dtype_name}", f"{n}x{n} matmul, the peak used below", 2 * n**3 / chosen / 1e9,
                done=Done("GFLOP", 2 * n**3 / 1e9))]
    if dtype_name != "float32":
        f32 = matmul_gflops(torch.float32, n)
        rows.append(row("matmul float32", f"{n}x{n} matmul", 2 * n**3 / f32 / 1e9, done=Done("GFLOP", 2 * n**3 / 1e9)))
    return chosen * 1e9, rows


def bench_judges(pool, model_name: str, dtype: str, sizes, repeats: int, peak: float | None) -> list[dict]:
    from rlaif.criteria import load_criterion
    from rlaif.judges.contrastive import ContrastiveJudge
    from rlaif.judges.pairwise import PairwiseJudge
    from rlaif.scoring import chat_prefix_ids, continuation_logprobs, next_token_logprobs, text_ids

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
    prefixes, cont_ids = [chat_prefix_ids(tok, c) for c in chats], [text_ids(tok, r) for r in conts]
    res = alternate({
        "bare": lambda: bare_forward(model, tok.pad_token_id, seqs, judge.backend.batch_size),
        "naive": lambda: [naive_sequence_logprob(model, tok, c, r) for c, r in zip(chats, conts, strict=True)],
        "full": lambda: continuation_logprobs(model, tok.pad_token_id, prefixes, cont_ids, judge.backend.batch_size,
                                              share_prefixes=False),
        "rlaif": lambda: judge.score(flat_p, flat_r),
    }, repeats)
    t, flops = res["rlaif"][0], 2 * P * tokens
    done = Done("tok", tokens, flops, peak)
    rows.append(row("judge contrastive vs bare forward", f"{len(seqs)} sequences, {tokens} tokens", t, res["bare"][0],
                    done))
    rows.append(row("judge contrastive vs naive", "one unbatched forward per (instruction, response)", t,
                    res["naive"][0], done))
    rows.append(row("judge contrastive vs full sequences", "batched, each prompt's prefix run once per candidate", t,
                    res["full"][0], done, note=f"{sizes['judge_k']} candidates share each prefix"))

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
        "full": lambda: next_token_logprobs(model, tok.pad_token_id, pseqs, option_ids, pj.backend.batch_size,
                                            share_prefixes=False),
        "rlaif": lambda: pj.compare(pp, a, b),
    }, repeats)
    t, flops = res["rlaif"][0], 2 * P * ptokens
    done = Done("tok", ptokens, flops, peak)
    rows.append(row("judge pairwise vs bare forward", f"{len(pseqs)} comparisons (both orders), {ptokens} tokens", t,
                    res["bare"][0], done))
    rows.append(row("judge pairwise vs naive", "one unbatched forward per order", t, res["naive"][0], done))
    rows.append(row("judge pairwise vs full sequences", "batched, each comparison's question run on its own", t,
                    res["full"][0], done))
    return rows


def bench_generate(pool, model_name: str, dtype: str, sizes, repeats: int, peak: float | None) -> list[dict]:
    from rlaif.generators.hf import HFGenerator, SampleTag
    from rlaif.scoring import chat_prefix_ids

    gen = HFGenerator(model_name, num_candidates=sizes["gen_k"], max_new_tokens=sizes["max_new_tokens"], dtype=dtype)
    tok, model = pool.tokenizer(model_name), pool.model(model_name, dtype)
    ps = prompts(sizes["gen_prompts"], offset=20)
    res = alternate({"plain": lambda: plain_generate(model, tok, ps, gen.num_candidates, gen),
                     "rlaif": lambda: gen.generate(model, tok, ps, tag=SampleTag(desc="bench generate"))}, repeats)
    cands = res["rlaif"][1]
    new = sum(len(c.token_ids) for c in cands)
    prompt_tokens = sum(len(chat_prefix_ids(tok, p.messages)) for p in ps) * gen.num_candidates
    flops = 2 * n_params(model) * (prompt_tokens + new)
    n = len(cands)
    rows = [row("generate vs model.generate", f"{n} samples, <= {gen.max_new_tokens} new tokens, batch {gen.batch_size}",
                res["rlaif"][0], res["plain"][0], Done("sample", n, flops, peak),
                note=f"{new} / {res['plain'][1]} tokens generated (rlaif / plain)")]
    return rows


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
                best["rlaif"] / steps, best["trl"] / steps, Done("step", 1, flops, use_peak),
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
    return [row("ppo iteration", what, total, done=Done("it", 1)),
            row("ppo sampling", "policy.generate", times["sample"] / iters,
                done=Done(flops=2 * P * tokens["sample"] / iters, peak=peak32)),
            row("ppo rollout forwards", "log-probs, reference and values", times["rollout"] / iters,
                done=Done(flops=2 * P * 2 * tokens["sample"] / iters, peak=peak32)),
            row("ppo scoring", "the contrastive judge", times["score"] / iters),
            row("ppo update", "clipped surrogate + value loss, backward, Adam", times["update"] / iters,
                done=Done(flops=6 * P * tokens["update"] / iters, peak=peak32))]


# ---------------------------------------------------------------------------------------- quickstart
def bench_quickstart(overrides: list[str], tok, P: int, peak: float | None) -> list[dict]:
    """Run ``rlaif`` once, with the stage cache off; per-stage rows from its summary.json, peak RSS
    of the child process. The run folder is a temporary one, or the ``hydra.run.dir=...`` among
    ``overrides`` (kept)."""
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(given[-1]) if given else Path(tmp, "run")
        t = time.perf_counter()
        # cache.enabled=false: every stage is computed, not read back from an earlier identical run
        proc = subprocess.run([sys.executable, "-m", "rlaif", f"hydra.run.dir={tmp}/run", "cache.enabled=false",
                               *overrides],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode:
            raise RuntimeError(f"rlaif {' '.join(overrides)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        summary = json.loads((run_dir / "summary.json").read_text())
        flops = quickstart_flops(run_dir, tok, P)
    rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # kB on Linux
    rows = [row(f"quickstart {k[5:-2]}", "stage wall time", float(v)) for k, v in summary.items()
            if k.startswith("time/") and k != "time/total_s" and float(v) > 0]
    total = float(summary.get("time/total_s", wall))
    floor = flops / peak if peak and flops else None
    rows.append(row("quickstart total", f"peak RSS {rss_gb:.2f} GB; compute floor "
                    + (f"{floor:.1f}s ({flops / 1e12:.2f} TFLOP, estimate)" if floor else "n/a"),
                    total, done=Done(flops=flops, peak=peak), note=f"{total / floor:.1f}x its floor" if floor else ""))
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
