"""``python -m rlaif.bench``: the same as ``rlaif-bench``."""

from rlaif.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
