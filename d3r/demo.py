"""The embedded demo: ``python -m d3r.demo --config conf/demo.yaml [--section.field VALUE ...]``.

Runs the mission's steps on the given config (by default synthetic rooms and the oracle teacher on
CPU) and prints each step's summary:

1. the teacher cache job (Ray Data → Lance);
2. the eval job: the teacher scored against ground truth (tables, figures, an MLflow run).
"""

from __future__ import annotations

import logging
import sys

from d3r.cache.pipeline import run_cache_job
from d3r.config import D3RConfig
from d3r.entry import run_job
from d3r.eval.job import run_eval

logger = logging.getLogger("d3r.demo")


def demo(config: D3RConfig) -> None:
    logger.info("step 1: teacher cache (%s teacher → %s)", config.teacher.name, config.cache.uri)
    print(run_cache_job(config).format())
    logger.info("step 2: evaluation of %s against ground truth → %s", config.eval.models, config.eval.out_dir)
    print(run_eval(config).format())


if __name__ == "__main__":
    sys.exit(run_job("d3r.demo", sys.argv[1:], demo))
