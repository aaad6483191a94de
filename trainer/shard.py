"""A reader's share of the training data: what `train_data(params, shard)` receives.

Each input pipeline of a job builds its own dataset. Under MultiWorkerMirroredStrategy there is
one per worker, and `shard.files` gives each its own files, `index::count` of them. Under
ParameterServerStrategy the chief builds one pipeline that the coordinator sends to every
worker (tensorflow/python/distribute/parameter_server_strategy_v2.py,
`_distribute_datasets_from_function`: one input pipeline, id 0), and steps go to whichever worker
is free, so no worker can own a shard: each reads every file. The chief traces that pipeline
once (coordinator/values.py, PerWorkerDatasetFromDatasetFunction), so the files come in one
order on every worker; only the shuffle of examples (a buffer of 10,000) is each worker's own.

The order of a share's files is drawn anew for each start of a run (its seed includes the step
training resumes from): a restarted chief must not read its first files again each time, which
would weigh them more than the rest.
"""

from __future__ import annotations

import glob
import pathlib
import random

from pml_trainer import data_cache
from pml_trainer.storage import StorageError, StorageUnavailable, is_remote

# The running task's workspace and S3 endpoint, for `pml_trainer.files` (set by pml_trainer.task).
where: tuple[str | None, str | None] = (None, None)


class Shard:
    def __init__(self, count: int, index: int, *, seed: str, workspace: str | None, s3_endpoint: str | None):
        self.count, self.index = count, index
        self._seed, self._workspace, self._s3_endpoint = seed, workspace, s3_endpoint
        self._splits: list[bool] = []

    @property
    def split_by_file(self) -> bool:
        """Whether every `files` call gave this reader a share of its own; if not, the trainer
        splits the examples instead (`ds.shard`), as for data that comes from no files."""
        return self.count == 1 or (bool(self._splits) and all(self._splits))

    def files(self, pattern: str) -> list[str]:
        """This reader's local paths of the files `pattern` names: a glob on a local folder
        (relative to the workspace), on gs:// or on s3:// (fetched through the data cache)."""
        every = matching(pattern, self._workspace, self._s3_endpoint)
        # Only an even split: every replica takes the same batch per step, so a reader with more
        # files than another would read each of its files less often.
        by_file = len(every) % self.count == 0
        self._splits.append(by_file)
        if not by_file:
            # Every reader gets every file and the trainer keeps every count-th example for each
            # (`ds.shard`): that splits the examples only if all readers see them in one order.
            random.Random(self._seed).shuffle(every)
            return every
        share = every[self.index :: self.count]
        random.Random(f"{self._seed}-{self.index}").shuffle(share)
        return share

    def __repr__(self) -> str:
        return f"Shard(index={self.index}, count={self.count})"


def matching(pattern: str, workspace: str | None, s3_endpoint: str | None) -> list[str]:
    """Every file `pattern` names, as sorted local paths (remote ones fetched first)."""
    if is_remote(pattern):
        try:
            return [str(p) for p in data_cache.matching_files(pattern, s3_endpoint)]
        except StorageUnavailable:
            raise  # an outage the reads waited out: exit 176, retried, not the task's fault
        except StorageError as err:
            raise FileNotFoundError(str(err)) from None
    root = pathlib.Path(workspace or ".")
    every = sorted(glob.glob(str(root / pattern), recursive=True))
    if not every:
        raise FileNotFoundError(f"{pattern}: no file matches in {root.resolve()}")
    return every
