"""Evaluate teachers and students against ground truth, and log the report to MLflow.

    python jobs/eval.py --config conf/demo.yaml [--eval.models '[teacher, ckpt.pt]'] [--section.field VALUE ...]
    ray job submit --working-dir . -- python jobs/eval.py --config conf/demo.yaml

Thin: the work is :func:`d3r.eval.job.run_eval`. A bad configuration (including a model that cannot
be loaded) exits with status 2 naming it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from d3r.config import D3RConfig
from d3r.entry import run_job
from d3r.eval.job import run_eval


def eval_job(config: D3RConfig) -> None:
    print(run_eval(config).format())


def main(argv: Sequence[str]) -> int:
    return run_job("jobs/eval.py", argv, eval_job)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
