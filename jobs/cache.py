"""The cache job: ``python jobs/cache.py --config conf/demo.yaml [--section.field VALUE ...]``.

Also runs as a Ray job (``ray job submit --working-dir . -- python jobs/cache.py ...``). Prints the
summary; a bad configuration exits with status 2 naming the field, a table locked by another job 3.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from d3r.cache.pipeline import run_cache_job
from d3r.config import D3RConfig
from d3r.entry import run_job


def cache_job(config: D3RConfig) -> None:
    print(run_cache_job(config).format())


def main(argv: Sequence[str]) -> int:
    return run_job("jobs/cache.py", argv, cache_job)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
