"""Constitutional AI, supervised stage (Bai et al. 2022): critique, revise, fine-tune on the revisions.

For each training prompt the policy writes a response, critiques it under one principle of the
criterion's constitution (chosen per prompt by ``Criterion.principle_for(seed, prompt_id)``; the
criterion's description when it lists none), and rewrites it; TRL's SFTTrainer then fine-tunes the
policy on (prompt -> final revision) with the loss on the revision only. Every step is written to
``revisions.jsonl`` in the output folder, including the revisions that were dropped (empty, or the
same as the text they revise) and why, so the training data can be read before trusting the result.

It needs no reward and no preference pairs; the RL stage of CAI is any preference optimizer run
afterwards with a principle-aware judge.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import Field, field_validator

from rlaif import distributed, progress
from rlaif.io import read_jsonl, write_json, write_records
from rlaif.optimizers.base import TrainContext, lora_config
from rlaif.optimizers.options import TrainingOptions, take_options
from rlaif.optimizers.trl_online import common_args, log_forwarder, resumer, train_resumable
from rlaif.options import Count, Positive
from rlaif.types import Prompt

log = logging.getLogger(__name__)

_LABEL = re.compile(r"^\s*(revision|revised response|rewritten response|rewrite)\s*:\s*", re.IGNORECASE)


def clean_revision(text: str) -> str:
    """Strip whitespace and a leading "Revision:"-style label that models often add."""
    return _LABEL.sub("", text.strip(), count=1).strip()


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


class ConstitutionalOptions(TrainingOptions):
    """``optimizer=cai_sft`` (conf/optimizer/cai_sft.yaml has every default)."""

    CONF: ClassVar[str] = "optimizer/cai_sft"
    critique_request: str
    revision_request: str
    num_revisions: Count  # critique-revision rounds per response
    response_max_new_tokens: Count | None
    critique_max_new_tokens: Count
    revision_max_new_tokens: Count | None
    temperature: Positive | None
    generation_batch_size: Count
    max_length: Annotated[int, Field(ge=8)]
    gradient_checkpointing: bool

    @field_validator("critique_request", "revision_request")
    @classmethod
    def _has_principle(cls, v):
        if "{principle}" not in v:
            raise ValueError(f"must contain {{principle}}, where the sampled principle goes: {v!r}")
        return v


class ConstitutionalSFT:
    name = "cai_sft"
    needs_pairs = False
    needs_reward = False
    reads = ("criteria",)  # run config it uses beyond its own (critiques and revises under the run's criterion)
    Options = ConstitutionalOptions

    def __init__(self, **options):
        take_options(self, ConstitutionalOptions, options)

    # -- the constitution ---------------------------------------------------------------------------
    @staticmethod
    def principle(criterion, seed: int, prompt_id: str, round_: int) -> str:
        """Round 0 uses ``principle_for(seed, prompt_id)``; later rounds add the round to the key."""
        if criterion is None:
            raise ValueError("cai_sft needs the run's criterion (its principles, or its description as the one "
                             "principle)")
        key = (prompt_id,) if round_ == 0 else (prompt_id, str(round_))
        p = criterion.principle_for(seed, *key)
        if p is None:
            p = (criterion.description or "").strip()
            if not p:
                raise ValueError(f"criteria '{criterion.name}' has neither principles nor a description for cai_sft: "
                                 f"add `principles:` to conf/criteria/{criterion.name}.yaml")
        return p

    # -- the supervised data ------------------------------------------------------------------------
    def sampler(self, model, tok, ctx: TrainContext):
        """``sample(chats, ids, max_new_tokens, stage) -> texts``: the policy's seeded samples, one per chat;
        sampled tokens are added to ``ctx.counters["generated_tokens"]``."""
        from rlaif.generators.hf import HFGenerator, SampleTag

        temperature = self.temperature if self.temperature is not None else ctx.temperature

        def sample(chats: list[list[dict]], ids: list[str], max_new: int, stage: int) -> list[str]:
            gen = HFGenerator(model="policy", num_candidates=1, max_new_tokens=max_new, temperature=temperature,
                              top_p=ctx.top_p, batch_size=self.generation_batch_size)
            ps = [Prompt(id=i, text=c[-1]["content"], messages=c, split="train") for c, i in zip(chats, ids, strict=True)]
            cands = gen.generate(model, tok, ps, k=1, seed=ctx.seed * 1000 + stage,
                                 tag=SampleTag(desc=f"cai stage {stage}"))
            ctx.counters["generated_tokens"] = ctx.counters.get("generated_tokens", 0) + sum(c.num_tokens for c in cands)
            return [c.text for c in cands]

        return sample

    def revise(self, ctx: TrainContext, sample) -> list[dict]:
        """Responses, critiques and revisions for every prompt; one record per (prompt, round).

        Round r critiques and revises the latest usable text; a revision that is empty or the same as
        the text it revises is recorded with its ``skip_reason`` and not used. A prompt's SFT target
        (``used``) is its last usable revision.
        """
        response_len = self.response_max_new_tokens or ctx.max_new_tokens
        revision_len = self.revision_max_new_tokens or response_len
        ids = [p.id for p in ctx.prompts]
        original = sample([p.messages for p in ctx.prompts], ids, response_len, 0)
        current = list(original)
        records: list[dict] = []
        last_valid: dict[str, int] = {}  # prompt id -> index of the record whose revision is the SFT target
        for r in range(self.num_revisions):
            criterion = ctx.criterion if ctx.criterion is not None else getattr(ctx.judge, "criterion", None)
            principles = [self.principle(criterion, ctx.seed, p.id, r) for p in ctx.prompts]
            critique_chats = [[*p.messages, {"role": "assistant", "content": cur},
                               {"role": "user", "content": self.critique_request.format(principle=pr)}]
                              for p, cur, pr in zip(ctx.prompts, current, principles, strict=True)]
            critiques = [c.strip() for c in sample(critique_chats, ids, self.critique_max_new_tokens, 1 + 2 * r)]
            revision_chats = [[*chat, {"role": "assistant", "content": crit},
                               {"role": "user", "content": self.revision_request.format(principle=pr)}]
                              for chat, crit, pr in zip(critique_chats, critiques, principles, strict=True)]
            revisions = [clean_revision(t) for t in sample(revision_chats, ids, revision_len, 2 + 2 * r)]
            for i, p in enumerate(ctx.prompts):
                skip = "empty" if not revisions[i] else "unchanged" if _same(revisions[i], current[i]) else None
                records.append({"prompt_id": p.id, "round": r, "principle": principles[i], "response": current[i],
                                "critique": critiques[i], "revision": revisions[i], "used": False,
                                "skip_reason": skip})
                if skip is None:
                    current[i] = revisions[i]
                    last_valid[p.id] = len(records) - 1
        for p, orig, cur in zip(ctx.prompts, original, current, strict=True):
            if p.id in last_valid and not _same(cur, orig):
                records[last_valid[p.id]]["used"] = True
        return records

    def _revise_shared(self, ctx: TrainContext, sample) -> list[dict]:
        """``revise`` over all prompts; in a multi-process launch each process revises every
        world_size-th prompt and all of them get every record, in prompt order."""
        if not distributed.enabled():
            return self.revise(ctx, sample)
        import dataclasses

        import torch.distributed as dist

        mine = self.revise(dataclasses.replace(ctx, prompts=ctx.prompts[distributed.rank()::distributed.world_size()]),
                           sample)
        parts: list = [None] * distributed.world_size()
        dist.all_gather_object(parts, mine)
        order = {p.id: i for i, p in enumerate(ctx.prompts)}
        return sorted((r for part in parts for r in part), key=lambda r: (order[r["prompt_id"]], r["round"]))

    def train(self, ctx: TrainContext) -> dict[str, float]:
        """Write revisions.jsonl, fine-tune on the used revisions, save the policy to ``ctx.output_dir``."""

        import torch
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        from rlaif.models import load_causal_lm, load_tokenizer

        output_dir = Path(ctx.output_dir)
        tok = load_tokenizer(ctx.policy_path, ctx.trust_remote_code)
        model = load_causal_lm(ctx.policy_path, self.dtype, ctx.trust_remote_code)
        if torch.cuda.is_available():  # sample on the GPU; the trainer places the model itself afterwards
            model.to("cuda")
        model.eval()
        # The revisions are kept beside the checkpoints: a rerun after a kill does not sample them again.
        saved = Path(ctx.checkpoint_dir) / "revisions.jsonl" if ctx.checkpoint_dir else None
        if saved is not None and saved.exists() and (saved.parent / "revisions_counters.json").exists():
            records = read_jsonl(saved)
            if distributed.is_main():  # totals over the processes; the pipeline sums the processes' counts
                ctx.counters.update(json.loads((saved.parent / "revisions_counters.json").read_text()))
        else:
            records = self._revise_shared(ctx, self.sampler(model, tok, ctx))
            totals = distributed.sum_counters(dict(ctx.counters))
            if saved is not None and distributed.is_main():
                write_records(saved, records)
                write_json(saved.parent / "revisions_counters.json", totals)
        write_records(output_dir / "revisions.jsonl", records)
        by_id = {p.id: p for p in ctx.prompts}
        used = [r for r in records if r["used"]]
        counts = {"train/revised": float(len(used)),
                  "train/skipped_revisions": float(sum(r["skip_reason"] is not None for r in records)),
                  "train/unrevised_prompts": float(len(ctx.prompts) - len(used))}
        ctx.log(counts, step=0)
        if not used:
            raise ValueError(f"cai_sft: no usable revision for any of {len(ctx.prompts)} prompts (all empty or "
                             f"unchanged; see {output_dir / 'revisions.jsonl'}): raise revision_max_new_tokens or "
                             "reword optimizer.revision_request")
        data = Dataset.from_list([{"prompt": by_id[r["prompt_id"]].messages,
                                   "completion": [{"role": "assistant", "content": r["revision"]}]} for r in used])
        args = SFTConfig(**common_args(self, ctx.seed, output_dir, checkpoint_dir=ctx.checkpoint_dir),
                         completion_only_loss=True, max_length=self.max_length, packing=False, dataset_num_proc=None)
        last: dict[str, float] = {}
        resume = resumer(args, ctx, last)
        fwd = log_forwarder(ctx.log, last, "CAI SFT", "lower optimizer.learning_rate")
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                             peft_config=lora_config(self.lora), callbacks=[c for c in (resume, fwd) if c])
        progress.attach(trainer, "cai_sft")
        out = train_resumable(trainer, resume, tok, output_dir, last, ctx)
        return {**out, **counts, "train/generated_tokens": float(ctx.counters.get("generated_tokens", 0))}
