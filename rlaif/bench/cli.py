"""``rlaif-bench``: rlaif's own stages timed side by side with the plainest code that does the same work.

The command line (``rlaif-bench``, ``python -m rlaif.bench``): arguments, the sections it runs,
the printed table and ``bench.json``. ``--help`` shows the first line of this docstring; the rows
are described in ``rlaif.bench``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from rlaif.bench.rows import (
    bench_dpo,
    bench_generate,
    bench_judges,
    bench_matmul,
    bench_ppo,
    bench_quickstart,
)
from rlaif.bench.timing import matmul_gflops
from rlaif.bench.vllm_rows import bench_vllm
from rlaif.bench.workload import SIZES, n_params

SECTIONS = ("matmul", "judge", "generate", "dpo", "ppo", "vllm")  # vllm: where it is installed


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
    if "vllm" in args.only:
        rows += bench_vllm(pool, args.model, p.dtype, sizes, args.repeats, peak)
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
