"""The embedded demo: ``python -m d3r.demo --config conf/demo.yaml [--section.field VALUE ...]``.

Runs the mission's steps on the given config (by default synthetic rooms and the oracle teacher on
CPU) and prints each step's summary:

1. the teacher cache job (Ray Data → Lance);
2. the eval job: the teacher scored against ground truth (tables, figures, an MLflow run).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from d3r.cache.pipeline import run_cache_job
from d3r.config import ConfigError, load_config, split_config_args
from d3r.eval.job import run_eval

logger = logging.getLogger("d3r.demo")


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        path, overrides = split_config_args(argv)
        config = load_config(path, overrides)
    except ConfigError as exc:
        print(f"d3r.demo: {exc}", file=sys.stderr)
        return 2

    logger.info("step 1: teacher cache (%s teacher → %s)", config.teacher.name, config.cache.uri)
    print(run_cache_job(config).format())
    logger.info("step 2: evaluation of %s against ground truth → %s", config.eval.models, config.eval.out_dir)
    print(run_eval(config).format())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
