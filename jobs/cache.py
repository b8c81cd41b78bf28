"""The cache job: ``python jobs/cache.py --config conf/demo.yaml [--section.field VALUE ...]``.

Also runs as a Ray job (``ray job submit --working-dir . -- python jobs/cache.py ...``). Prints the
summary; a bad configuration exits with status 2 naming the field, a table locked by another job 3.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from d3r.cache.pipeline import run_cache_job
from d3r.cache.store import CacheLockedError
from d3r.config import ConfigError, load_config, split_config_args


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        path, overrides = split_config_args(argv)
        summary = run_cache_job(load_config(path, overrides))
    except ConfigError as exc:
        print(f"jobs/cache.py: {exc}", file=sys.stderr)
        return 2
    except CacheLockedError as exc:
        print(f"jobs/cache.py: {exc}", file=sys.stderr)
        return 3
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
