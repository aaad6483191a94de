"""Which records each reader of a job gets, in process, through the trainer's own pipeline.

The task is the documented example (examples/tfrecord) over shards written for the test: each
record's target is its shard's number times 1000 plus its place in the shard, so a batch says which
files and which examples it came from. The streams are the ones the loop builds
(`Task.train_data`), one per input pipeline, as `tf.distribute` asks for them.
"""

from __future__ import annotations

import collections
import importlib
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from pml_trainer import pipeline
from pml_trainer.options import TrainOptions
from pml_trainer.task import Task

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "tfrecord"
PER_FILE = 1000  # an example's id is shard * PER_FILE + its place in the shard


def example_task(pattern: str, seed: int = 42) -> Task:
    opts = TrainOptions(
        task="trainer/task.py", workspace=str(EXAMPLE), params={"train": pattern, "eval": pattern}, seed=seed
    )
    return Task(opts)


def write_shards(folder: pathlib.Path, shards: int, per_shard: int | list[int]) -> str:
    """`shards` files of `per_shard` records (a number, or one per file) whose targets are their
    ids; their glob."""
    example_task(str(folder / "none"))  # imports the example's package, `trainer`, in this process
    records = importlib.import_module("trainer.records")
    folder.mkdir(parents=True, exist_ok=True)
    sizes = per_shard if isinstance(per_shard, list) else [per_shard] * shards
    for shard, size in enumerate(sizes):
        ids = shard * PER_FILE + np.arange(size, dtype=np.float32)
        x = np.zeros((size, records.FEATURES), np.float32)
        records.write(str(folder / f"train-{shard:05d}-of-{shards:05d}.tfrecord"), x, ids.reshape(-1, 1))
    return str(folder / "train-*.tfrecord")


def stream(task: Task, batch: int, count: int, index: int, seed: int | None = 42, resume_step: int = 0):
    """Reader `index` of `count`'s training batches, as tf.distribute builds that input pipeline."""
    make = task.train_data(batch, seed, resume_step)
    context = tf.distribute.InputContext(num_input_pipelines=count, input_pipeline_id=index, num_replicas_in_sync=count)
    return iter(make(context) if count > 1 else make())


def ids(batches, steps: int) -> list[int]:
    return [int(v) for _ in range(steps) for v in next(batches)[1].numpy().ravel()]


@pytest.fixture(scope="module")
def seven(tmp_path_factory) -> str:
    """Seven shards of 64 records: a number of files that three readers can't split evenly."""
    return write_shards(tmp_path_factory.mktemp("seven"), 7, 64)


def test_mirrored_readers_read_disjoint_shares_that_cover_every_shard(tmp_path):
    pattern = write_shards(tmp_path / "six", 6, 64)  # six files divide evenly over three readers
    task = example_task(pattern)
    shares = []
    for index in range(3):
        # Each pass is a new permutation of the reader's share (its shuffle buffer holds it all),
        # so a pass's worth of batches holds each of its examples exactly once.
        seen = ids(stream(task, 64, 3, index), 2)
        shards = sorted({i // PER_FILE for i in seen})
        assert len(shards) == 2
        assert sorted(seen) == [s * PER_FILE + k for s in shards for k in range(64)]
        shares.append(set(shards))
    assert shares == [{0, 3}, {1, 4}, {2, 5}]  # files[index::count]: disjoint, and all of them


def test_files_that_do_not_divide_evenly_are_split_by_example(seven):
    """Seven files over three readers: by file, one reader would read its files less often than
    the others read theirs, so every reader reads all seven and keeps every third example."""
    task = example_task(seven)
    # A pass of reader i holds examples i, i + 3, ... of the 448: 150, 149 and 149 of them.
    seen = [ids(stream(task, 1, 3, index), len(range(index, 7 * 64, 3))) for index in range(3)]
    every = sorted(i for reader in seen for i in reader)
    assert every == [s * PER_FILE + k for s in range(7) for k in range(64)]  # disjoint, and all of them


def test_with_fewer_files_than_readers_each_example_is_read_once_per_pass(tmp_path):
    # Sizes that are no multiple of the readers: every reader must see the examples in one order
    # for each to keep every fourth, whatever order the files come in.
    sizes = [129, 131, 124]
    pattern = write_shards(tmp_path / "three", 3, sizes)
    task = example_task(pattern)
    seen = [ids(stream(task, 32, 4, index), 3) for index in range(4)]  # 384 examples, 96 each
    every = sorted(i for reader in seen for i in reader)
    assert every == [s * PER_FILE + k for s, size in enumerate(sizes) for k in range(size)]
    # Every reader reads all three files, and keeps its own quarter of their examples.
    assert all({i // PER_FILE for i in reader} == {0, 1, 2} for reader in seen)


@pytest.mark.parametrize("seed", [42, None], ids=["seeded", "parameter-server"])
def test_a_single_reader_reads_every_file(seven, seed):
    """ParameterServerStrategy builds one pipeline (count 1) that every worker runs, without a seed."""
    task = example_task(seven)
    seen = ids(stream(task, 64, 1, 0, seed=seed), 7)
    assert sorted(seen) == [s * PER_FILE + k for s in range(7) for k in range(64)]


# --- resuming does not start the data over ----------------------------------------------------


@pytest.fixture(scope="module")
def twenty(tmp_path_factory) -> str:
    """Twenty shards of 1000 records: twice the shuffle buffer, so which files are read first
    decides which examples the first batches can hold."""
    assert 20 * PER_FILE >= 2 * pipeline.SHUFFLE_BUFFER
    return write_shards(tmp_path_factory.mktemp("twenty"), 20, PER_FILE)


def first_files(task: Task, resume_step: int, count: int = 1, index: int = 0) -> list[int]:
    return [i // PER_FILE for i in ids(stream(task, 256, count, index, resume_step=resume_step), 1)]


def test_a_resumed_run_starts_from_other_files_and_examples(twenty):
    task = example_task(twenty)
    start = first_files(task, 0)
    assert first_files(task, 0) == start  # the same start is the same data: the check below can fail
    resumed = first_files(task, 300)
    assert set(resumed) != set(start)
    # A mirrored reader's first examples change too.
    first = [ids(stream(task, 256, 2, 1, resume_step=step), 1) for step in (0, 300)]
    assert set(first[0]) != set(first[1])


def test_over_many_restarts_no_file_is_favoured_in_the_first_batches(twenty):
    """A run restarted 60 times (a checkpoint every 50 steps): the first batch after each start.
    Were the files read in the same order each time, 10 of the 20 would fill every first batch and
    the others none; drawn anew, each file is about as likely as any other to come first."""
    task = example_task(twenty, seed=7)
    counts = collections.Counter(f for restart in range(60) for f in first_files(task, 50 * restart))
    expected = 60 * 256 / 20
    print(f"first-batch examples per file over 60 starts: {sorted(counts.values())}, {expected:.0f} expected")
    assert set(counts) == set(range(20))
    # Each file is among the first ten in about half the starts, and then gives about a tenth of the
    # batch: a spread of about 15% around the expected count (measured: 0.79 to 1.29 of it; with
    # the files in the same order at every start, 8 of the 20 never came first).
    assert all(0.5 * expected <= n <= 1.5 * expected for n in counts.values()), counts
