"""The eval job: score teachers and students, write tables and figures, log them to MLflow.

    python jobs/eval.py --config conf/demo.yaml [--eval.models '[teacher, ckpt.pt]'] [--section.field VALUE ...]
    ray job submit --working-dir . -- python jobs/eval.py --config conf/demo.yaml

eval.models lists 'teacher', student checkpoint paths and registered models ('models:/NAME@ALIAS').
Each is scored against ground truth where the scenes have it, and each student against the teacher.
Tables and figures go to eval.out_dir and to one MLflow run. Exit status: 0 done, 2 a bad
configuration (including a model that cannot be loaded; the message names it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from d3r.config import JOB_SECTIONS, D3RConfig, add_config_arguments
from d3r.entry import run_job


def eval_job(config: D3RConfig) -> None:
    from d3r.eval.job import run_eval  # here, so that --help answers without loading Ray

    print(run_eval(config).format())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobs/eval.py", description=__doc__, allow_abbrev=False)
    return add_config_arguments(parser, JOB_SECTIONS["eval"])


def main(argv: Sequence[str]) -> int:
    build_parser().parse_known_args(argv)  # -h/--help prints the options and exits
    return run_job("jobs/eval.py", argv, eval_job)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
