"""Progress bars and per-step lines, with one rule for when they show.

Bars go to stderr on the main process of a run; ``TQDM_DISABLE=1`` turns every bar off (tqdm
itself, TRL's reference pass and ours read it). Training prints one compact line per logging
step on the main process, bars or not, in place of the Trainer's raw log dicts.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def _main() -> bool:
    from rlaif.distributed import is_main

    return is_main()


def enabled() -> bool:
    """Whether bars show: on the main process, unless ``TQDM_DISABLE`` is set (to anything but 0/false)."""
    off = os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")
    return _main() and not off


def bar(total: int | None, desc: str, unit: str, initial: int = 0, disable: bool = False,
        leave: bool = True) -> tqdm:
    """A bar of ``total`` items (``initial`` of them already done, e.g. resumed) on stderr.
    ``leave=False`` for a bar inside a stage's own (it is cleared when done)."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                leave=leave, disable=disable or not enabled())


def write(line: str) -> None:
    """One line on stderr above any open bar (main process only)."""
    if _main():
        tqdm.write(line, file=sys.stderr)


def counted(fn, bar: tqdm):
    """``fn`` that moves ``bar`` one item on after each call (its first argument shown as the
    current item) and closes it after the last."""
    def wrapped(name, *args, **kw):
        bar.set_postfix_str(str(name))
        try:
            return fn(name, *args, **kw)
        finally:
            bar.update(1)
            if bar.total is not None and bar.n >= bar.total:
                bar.close()

    return wrapped


def quiet_other_processes() -> None:
    """Turn bars off for the rest of a non-main process, also those of libraries that only read the
    environment (TRL's reference log-prob pass)."""
    if not _main():
        os.environ["TQDM_DISABLE"] = "1"


# Logged keys shown in a step line, in order, under a short label (the first present key of a label wins).
_SHOWN = (("loss", "loss"), ("rewards/margins", "reward margin"), ("rewards/accuracies", "acc"),
          ("accuracy", "acc"), ("mean_token_accuracy", "acc"), ("reward", "reward"), ("kl", "kl"),
          ("objective/kl", "kl"), ("learning_rate", "lr"), ("grad_norm", "grad"))


def step_line(step: int, total: int | None, logs: dict, shown=_SHOWN) -> str:
    """``step 4/12  loss 0.652  reward margin 0.086  acc 0.88  lr 3.7e-05  grad 11.5``."""
    parts, used = [f"step {step}/{total}" if total else f"step {step}"], set()
    for key, label in shown:
        v = logs.get(key)
        if label in used or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        used.add(label)
        parts.append(f"{label} {v:.3g}")
    return "  ".join(parts)


def train_progress(name: str):
    """A TrainerCallback: a bar over optimizer steps and one ``step_line`` per logging step."""
    from transformers import TrainerCallback

    class TrainProgress(TrainerCallback):
        def __init__(self):
            self.bar = None

        def on_train_begin(self, args, state, control, **kw):
            self.bar = bar(state.max_steps or None, f"train {name}", "step", initial=state.global_step,
                           disable=not state.is_world_process_zero)

        def on_step_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kw):
            logs = dict(logs or {})
            if not state.is_world_process_zero:
                return
            if "train_runtime" in logs:  # the Trainer's closing summary
                loss = logs.get("train_loss")
                write(f"{name} done  {state.global_step} steps  {logs['train_runtime']:.0f} s"
                      + (f"  mean loss {loss:.3g}" if isinstance(loss, (int, float)) else ""))
                return
            evals = {k.removeprefix("eval_"): v for k, v in logs.items() if k.startswith("eval_")}
            if evals:
                write("eval " + step_line(state.global_step, state.max_steps, evals))
                return
            write(step_line(state.global_step, state.max_steps, logs))
            if self.bar is not None and isinstance(logs.get("loss"), (int, float)):
                self.bar.set_postfix(loss=f"{logs['loss']:.3g}", refresh=False)

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TrainProgress()


def attach(trainer, name: str):
    """Replace the Trainer's progress bar and raw log printing with ``train_progress(name)``."""
    from transformers import trainer as hf_trainer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cls in {PrinterCallback, ProgressCallback, hf_trainer.DEFAULT_PROGRESS_CALLBACK}:
        trainer.remove_callback(cls)
    quiet_other_processes()
    trainer.add_callback(train_progress(name))
    return trainer
