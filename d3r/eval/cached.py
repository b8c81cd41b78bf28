"""The teacher's outputs for an evaluation, read from the cache table the cache job wrote: never recomputed.

``eval.teacher_outputs: cache`` (the default) scores the teacher, and every student against it, with the
outputs stored in ``cache.uri`` (latest version) for each sample, decoded by
:func:`d3r.cache.codec.decode_row`: what the students were trained on, at no teacher cost, and on data
without ground truth too. A sample is found by its id (the same ``scenes.*`` settings give the same ids);
one the table does not hold is a reject of the eval, not a reason to run the teacher.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np
import pyarrow.compute as pc

from d3r.cache.codec import decode_row
from d3r.cache.rows import SUP_PREFIX
from d3r.cache.store import open_dataset
from d3r.errors import ConfigError
from d3r.scenes.records import View
from d3r.scenes.sampling import Sample

logger = logging.getLogger(__name__)

_ROW_COLUMNS = ("sample_id", "view_names", "N", "H", "W", "codec", "codec_version")


class CachedTeacher:
    """The teacher outputs held by the cache table at ``uri``, looked up by sample id.

    Attributes:
        uri: the table.
        sample_ids: the ids of the samples it holds.
        teacher: the teacher's name as its rows record it (``oracle``, ``fast3r``...).

    Raises:
        ConfigError: naming ``cache.uri`` when there is no table there.
    """

    def __init__(self, uri: str) -> None:
        dataset = open_dataset(uri)
        if dataset is None:
            raise ConfigError(f"eval.teacher_outputs='cache': there is no cache table at cache.uri={uri!r}; run the "
                              "cache job with this config first, or set eval.teacher_outputs=run to run the teacher")
        self.uri = uri
        self._dataset = dataset
        index = dataset.to_table(columns=["sample_id", "teacher_fingerprint_json"])
        self.sample_ids = set(index["sample_id"].to_pylist())
        fingerprints = index["teacher_fingerprint_json"].to_pylist()
        self.teacher = json.loads(fingerprints[0]).get("name", "teacher") if fingerprints else "teacher"
        self._sup_columns = sorted(name for name in dataset.schema.names if name.startswith(SUP_PREFIX))

    def check_covers(self, samples: Sequence[Sample]) -> None:
        """At least one of ``samples`` must be in the table (else the cache was made from other data or settings).

        Raises:
            ConfigError: naming ``cache.uri`` and what to change.
        """
        held = sum(sample.id in self.sample_ids for sample in samples)
        if samples and not held:
            raise ConfigError(
                f"eval.teacher_outputs='cache': none of the {len(samples)} samples to evaluate is in the cache table "
                f"{self.uri} ({len(self.sample_ids)} samples of other scenes or scenes.* settings); run the cache "
                "job with the same scenes.* settings, or set eval.teacher_outputs=run")
        if held < len(samples):
            logger.warning("%d of %d samples to evaluate are not in %s: their teacher scores are rejects",
                           len(samples) - held, len(samples), self.uri)

    def outputs(self, sample: Sample, views: Sequence[View]) -> dict[str, np.ndarray]:
        """The stored outputs of ``sample`` (``pts3d_* [N, H, W, 3]``, ``conf_* [N, H, W]``, float32), checked
        against its loaded ``views``.

        Raises:
            ValueError: when the table has no row for the sample, or its row's views or size differ.
        """
        if sample.id not in self.sample_ids:
            raise ValueError(f"sample {sample.id} is not in the cache table {self.uri}; run the cache job on it")
        table = self._dataset.to_table(columns=[*_ROW_COLUMNS, *self._sup_columns],
                                       filter=pc.field("sample_id") == sample.id, limit=1)
        row = table.to_pylist()[0]
        height, width = views[0].image.shape[:2]
        if tuple(row["view_names"]) != tuple(sample.view_names) or (row["H"], row["W"]) != (height, width):
            raise ValueError(f"the cache row of sample {sample.id} holds views {row['view_names']} at "
                             f"{row['W']}x{row['H']}, the sample {list(sample.view_names)} at {width}x{height}")
        return decode_row(row)
