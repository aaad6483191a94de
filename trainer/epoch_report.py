"""What the chief reports each epoch: a table row on stdout, `metrics.jsonl` and TensorBoard scalars."""

from __future__ import annotations

import json
import pathlib

from pml_trainer import durable

COLUMNS = ("epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "examples_per_sec")
HEADER = f"{'epoch':>7} {'step':>7} {'loss':>8} {'acc':>7} {'val_loss':>9} {'val_acc':>8} {'seconds':>8} {'ex/s':>9}"


def row(record: dict, epochs: int) -> str:
    def num(key, width, digits):
        value = record.get(key)
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    return (
        f"{record['epoch']:>3}/{epochs:<3} {record['step']:>7} {num('loss', 8, 4)} "
        f"{num('accuracy', 7, 4)} {num('val_loss', 9, 4)} {num('val_accuracy', 8, 4)} "
        f"{num('seconds', 8, 2)} {num('examples_per_sec', 9, 0)}"
    )


class MetricsLog:
    """`metrics.jsonl`: one JSON object per finished epoch, never a duplicate.

    A restarted chief repeats the epoch it was in, so the epochs from the resumed one on are
    dropped before they are written again. The file is replaced whole, never half-written.
    """

    def __init__(self, path: pathlib.Path, resume_epoch: int):
        self.path = path
        self.records = [r for r in _read_jsonl(path) if r.get("epoch", 0) <= resume_epoch]

    def append(self, record: dict) -> None:
        self.records.append(record)
        durable.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))


def _read_jsonl(path: pathlib.Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def scalar(name: str, value: float, step: int) -> None:
    """A TensorBoard scalar, written with TensorFlow's core op: no tensorboard package needed."""
    import tensorflow as tf

    metadata = tf.compat.v1.SummaryMetadata(plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))
    tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=metadata)
