"""Evaluate teachers and students against ground truth, and log the report to MLflow.

    python jobs/eval.py --config conf/demo.yaml [--eval.models '[teacher, ckpt.pt]'] [--section.field VALUE ...]
    ray job submit --working-dir . -- python jobs/eval.py --config conf/demo.yaml

Thin: the work is :func:`d3r.eval.job.run_eval`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from d3r.config import ConfigError, load_config, split_config_args
from d3r.eval.job import run_eval


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        path, overrides = split_config_args(sys.argv[1:] if argv is None else argv)
        config = load_config(path, overrides)
    except ConfigError as exc:
        print(f"eval: {exc}", file=sys.stderr)
        return 2
    print(run_eval(config).format(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
