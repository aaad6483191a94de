"""PNG plots of experiment tables: time and the test score (the task's first metric) against the
parameter, or time and throughput per cluster shape.

matplotlib is imported here only, when a plot is written, so that the CLI starts fast.
"""

from __future__ import annotations

import math
import pathlib


def save(tables, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(len(tables), 2, figsize=(10, 3.6 * len(tables)), squeeze=False)
    for (time_ax, acc_ax), table in zip(axes, tables, strict=False):
        labels = [row.label for row in table.rows]
        positions = range(len(labels))
        times = [_value(row.mean("seconds")) for row in table.rows]
        time_errors = [row.spread("seconds") for row in table.rows]
        score = f"test_{table.metric}"
        accuracy = [_value(row.mean(score)) for row in table.rows]
        accuracy_errors = [row.spread(score) for row in table.rows]
        if table.column == "shape":
            time_ax.bar(positions, times, yerr=time_errors, color="tab:blue")
            acc_ax.bar(positions, [_value(row.mean("examples_per_sec")) for row in table.rows], color="tab:green")
            acc_ax.set_ylabel("examples/s")
        else:
            time_ax.errorbar(positions, times, yerr=time_errors, marker="o", color="tab:blue")
            acc_ax.errorbar(positions, accuracy, yerr=accuracy_errors, marker="o", color="tab:green")
            acc_ax.set_ylabel(score.replace("_", " "))
        time_ax.set_ylabel("training time (s)")
        for ax in (time_ax, acc_ax):
            # Shapes on two lines: slanted, the last one ran off the figure.
            ax.set_xticks(list(positions), [label.replace(", ", ",\n", 1) for label in labels])
            ax.set_xlabel(table.column)
            ax.grid(alpha=0.3)
        # From zero: an axis from 3.60 to 3.67 s made a 2% difference look steep.
        time_ax.set_ylim(
            bottom=0,
            top=max((t + e for t, e in zip(times, time_errors, strict=False) if not math.isnan(t)), default=1.0) * 1.1,
        )
        time_ax.set_title(f"{table.title}: time")
        acc_ax.set_title(f"{table.title}: {'throughput' if table.column == 'shape' else table.metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _value(mean):
    """A row's mean, or a gap where every run of it failed."""
    return math.nan if mean is None else mean


def plan(result, path: pathlib.Path) -> None:
    """`pmlctl plan`'s shapes on the recommended machine type: examples/s and price against the
    shape, the recommended one marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    chosen = result.recommended
    shapes = sorted(
        (s for s in result.shapes if s.machine == chosen.machine),
        key=lambda s: (s.ps == 0 and s.workers > 0, s.workers, s.ps),
    )
    labels = [s.label for s in shapes]
    positions = list(range(len(shapes)))
    fig, (rate_ax, price_ax) = plt.subplots(2, 1, figsize=(max(8, 0.28 * len(shapes)), 7), sharex=True)
    rate_ax.bar(positions, [s.examples_per_sec for s in shapes], color="tab:green")
    price_ax.bar(positions, [s.price_usd for s in shapes], color="tab:blue")
    for ax in (rate_ax, price_ax):
        ax.grid(alpha=0.3, axis="y")
    at = shapes.index(chosen)
    rate_ax.bar([at], [chosen.examples_per_sec], color="tab:red", label="recommended")
    price_ax.bar([at], [chosen.price_usd], color="tab:red")
    rate_ax.legend(loc="upper left")
    rate_ax.set_ylabel("examples/s (predicted)")
    price_ax.set_ylabel(f"price of {result.epochs} epochs (USD)")
    price_ax.set_xticks(positions, labels, rotation=90, fontsize=7)
    price_ax.set_xlabel("shape: WORKERSxPS, N mirrored workers (and the chief), or 1 process")
    rate_ax.set_title(f"pmlctl plan on {chosen.machine}: recommended {chosen.label} ({result.goal})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
