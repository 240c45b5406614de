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
* ``vllm``: vLLM beside transformers on the same generation and judging work (rlaif/bench/vllm_rows.py),
  where ``import vllm`` works.
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

The package: ``workload`` (the prompts, responses and pairs both sides get), ``timing`` (clocks,
alternation, the row record, the matmul peak), ``baselines`` (the plain code), ``rows`` (each
section measured, rlaif beside its baseline) and ``cli`` (``rlaif-bench``: arguments, the
printed table, bench.json). This module exports the command and what tests call.
"""

from rlaif.bench.cli import main, parse_args
from rlaif.bench.rows import bench_quickstart
from rlaif.bench.workload import n_params

__all__ = ["bench_quickstart", "main", "n_params", "parse_args"]
