"""The training job: distil the student from the cache table with Ray Train, tracked in MLflow.

    python jobs/train.py --config conf/demo.yaml [--section.field VALUE ...]
    ray job submit --working-dir . -- python jobs/train.py --config conf/demo.yaml --train.num_workers 2

Trains on the rows of cache.uri at train.cache_version, validates against the cached teacher and the
ground truth, checkpoints under train.storage_path/train.run_name, logs to the MLflow run of that name
and registers the student (alias candidate; champion when train.champion_metric beats the current one).
Rerunning with the same train.run_name resumes from its latest checkpoint. Prints a summary. Exit
status: 0 done, 2 a bad configuration (the message names the field), 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from d3r.config import JOB_SECTIONS, D3RConfig, add_config_arguments
from d3r.entry import run_job


def train_job(config: D3RConfig) -> None:
    from d3r.train.job import run_train  # here, so that --help answers without loading torch and Ray

    print(run_train(config).format())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobs/train.py", description=__doc__, allow_abbrev=False)
    return add_config_arguments(parser, JOB_SECTIONS["train"])


def main(argv: Sequence[str]) -> int:
    build_parser().parse_known_args(argv)  # -h/--help prints the options and exits
    return run_job("jobs/train.py", argv, train_job)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
