"""The training job: ``python jobs/train.py --config conf/demo.yaml [--section.field VALUE ...]``.

Trains the student on the cache table with Ray Train, tracks the run in MLflow and registers the model.
Also runs as a Ray job (``ray job submit --working-dir . -- python jobs/train.py ...``). Rerunning with
the same ``train.run_name`` resumes from its latest checkpoint. Prints the summary; a bad configuration
exits with status 2 naming the field.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from d3r.config import D3RConfig
from d3r.entry import run_job
from d3r.train.job import options_help, run_train


def train_job(config: D3RConfig) -> None:
    print(run_train(config).format())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobs/train.py", usage="%(prog)s [--config PATH] [--section.field VALUE ...]", description=__doc__,
        epilog=options_help(), allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="PATH", help="YAML config (e.g. conf/demo.yaml); default: built-in")
    return parser


def main(argv: Sequence[str]) -> int:
    build_parser().parse_known_args(argv)  # --help and -h print the options and exit
    return run_job("jobs/train.py", argv, train_job)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
