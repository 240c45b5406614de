"""The ``rlaif`` command: check overrides, then hand the composed config to ``pipeline.run``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from rlaif.config import ConfigError, check_overrides, conf_dir


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from rlaif.data import PromptFileError
    from rlaif.models import ModelResolutionError
    from rlaif.pipeline import run

    try:
        summary = run(cfg)
    except (ConfigError, PromptFileError, ModelResolutionError) as e:
        # A user error: say what to fix, without a traceback.
        print(f"rlaif: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return summary.get("eval/gold_reward_policy")  # what an Optuna sweeper would optimise


def main() -> None:
    overrides = [a for a in sys.argv[1:] if not a.startswith("-") and "=" in a]
    try:
        check_overrides(overrides)
    except ConfigError as e:
        print(f"rlaif: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    _hydra_main()


if __name__ == "__main__":
    main()
