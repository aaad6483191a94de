"""What the chief reports each epoch: a table row on stdout, `metrics.jsonl` and TensorBoard scalars."""

from __future__ import annotations

import json
import pathlib

from pml_trainer import durable


def header(names: tuple[str, ...]) -> str:
    """The table's header: the epoch, the step, each metric and its validation figure, the time."""
    columns = [f"{'epoch':>7}", f"{'step':>7}"]
    columns += [f"{_short(n):>{_width(n)}}" for n in names]
    columns += [f"{_short('val_' + n):>{_width('val_' + n)}}" for n in names]
    return " ".join([*columns, f"{'seconds':>8}", f"{'ex/s':>9}"])


def row(record: dict, epochs: int, names: tuple[str, ...]) -> str:
    def num(key, width, digits):
        value = record.get(key)
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    metrics = [num(n, _width(n), 4) for n in names] + [num("val_" + n, _width("val_" + n), 4) for n in names]
    return " ".join(
        [
            f"{record['epoch']:>3}/{epochs:<3}",
            f"{record['step']:>7}",
            *metrics,
            num("seconds", 8, 2),
            num("examples_per_sec", 9, 0),
        ]
    )


def scores(figures: dict[str, float]) -> str:
    """`test loss 0.3412, test accuracy 0.8812`: figures by name, for a log line."""
    return ", ".join(f"{name.replace('_', ' ')} {value:.4f}" for name, value in figures.items())


def _short(name: str) -> str:
    """A column's title: "accuracy" as "acc", as the study's table had it; other names as they are."""
    return name.replace("accuracy", "acc")


def _width(name: str) -> int:
    return max(len(_short(name)), 7)


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
