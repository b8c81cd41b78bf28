"""The cache job: run the teacher once over your scenes and store its outputs in a Lance table.

    python jobs/cache.py --config conf/demo.yaml [--section.field VALUE ...]
    ray job submit --working-dir . -- python jobs/cache.py --config conf/fast3r.yaml --scenes.root /data/scenes

Writes one row per sample to the table at cache.uri (one version per cache.chunk_samples rows) and
rejected inputs, each with its reason, beside it. A rerun computes only what is missing. Prints a
summary; inspect the table with `d3r cache show URI`. Exit status: 0 done, 2 a bad configuration
(the message names the field), 3 another job is writing the same table, 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from d3r.config import JOB_SECTIONS, D3RConfig, add_config_arguments
from d3r.entry import run_job


def cache_job(config: D3RConfig) -> None:
    from d3r.cache.pipeline import run_cache_job  # here, so that --help answers without loading Ray

    print(run_cache_job(config).format())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobs/cache.py", description=__doc__, allow_abbrev=False)
    return add_config_arguments(parser, JOB_SECTIONS["cache"])


def main(argv: Sequence[str]) -> int:
    build_parser().parse_known_args(argv)  # -h/--help prints the options and exits
    return run_job("jobs/cache.py", argv, cache_job)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
