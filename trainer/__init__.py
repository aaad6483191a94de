"""The code that runs inside one task of a distributed training job.

Importing this package does not import TensorFlow; only `pml_trainer.__main__` and the modules it
loads for a role do, so the control plane can reuse `pml_trainer.options` and `pml_trainer.tf_config`.
"""

from __future__ import annotations


def files(pattern: str) -> list[str]:
    """Every file a local (relative to the workspace), gs:// or s3:// glob names, as local paths:
    for a task's eval_data, which reads all of its files (train_data reads its share, shard.files)."""
    from pml_trainer import shard

    return shard.matching(pattern, *shard.where)
