"""The ``rlaif`` command: check overrides, then hand the composed config to ``pipeline.run``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from rlaif.config import ConfigError, check_overrides, conf_dir


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from rlaif.backends.api import RequestsFailed
    from rlaif.data import PromptFileError
    from rlaif.diagnostics.gate import JudgeGateError
    from rlaif.models import ModelResolutionError
    from rlaif.pipeline import run
    from rlaif.reproductions.study import StudyFailed, is_study, run_study
    from rlaif.sweeps import check_metric, metric_value

    try:
        metric = check_metric(cfg)  # sweep.metric: what a sweeper (Optuna) optimises
        if is_study(cfg):  # experiment=paper/*: several runs and a check (rlaif/reproductions/study.py)
            from hydra.core.hydra_config import HydraConfig

            hc = HydraConfig.get()
            summary = run_study(cfg, hc.runtime.output_dir, list(hc.overrides.task))
            return float(bool(summary.get("reproduction/passed")))
        summary = run(cfg)
    except StudyFailed as e:
        print(f"rlaif: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except (ConfigError, PromptFileError, ModelResolutionError, JudgeGateError, RequestsFailed) as e:
        # A user error: say what to fix, without a traceback.
        print(f"rlaif: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:  # Ctrl-C / SIGTERM: run() kept the work and said how to resume
        raise SystemExit(128 + getattr(e, "signum", 2)) from None
    return metric_value(summary, metric)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="audit")
def _hydra_audit(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from rlaif.audit import run_audit
    from rlaif.data import PromptFileError
    from rlaif.models import ModelResolutionError

    try:
        report = run_audit(cfg, HydraConfig.get().runtime.output_dir)
    except (ConfigError, PromptFileError, ModelResolutionError) as e:
        print(f"rlaif-audit: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    first = next(iter(report["judges"].values()), {})
    return first.get("all", {}).get("accuracy_averaged")


def _precheck(prog: str, config_name: str) -> None:
    from rlaif.sweeps import missing_plugin

    overrides = [a for a in sys.argv[1:] if not a.startswith("-") and "=" in a]
    try:
        if problem := missing_plugin(overrides):
            raise ConfigError(problem)
        check_overrides(overrides, config_name)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    _precheck("rlaif", "config")
    _hydra_main()


def audit_main() -> None:
    """``rlaif-audit``: audit judge configs on labelled pairs (see rlaif/audit.py)."""
    _precheck("rlaif-audit", "audit")
    _hydra_audit()


if __name__ == "__main__":
    main()
