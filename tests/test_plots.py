"""What the sweep and compare plots show, and the time left a sweep announces (issue 14, item 8)."""

from __future__ import annotations

import pytest

from deploy import experiments, plots
from deploy.experiments import Row, Table
from deploy.spec import JobSpec


def row(label: str, seconds: list[float], test_accuracy: list[float], train_accuracy: float = 0.99) -> Row:
    made = Row(label)
    made.runs = [
        {"seconds": s, "test_accuracy": a, "accuracy": train_accuracy, "examples_per_sec": 1000.0}
        for s, a in zip(seconds, test_accuracy, strict=False)
    ]
    return made


@pytest.fixture
def figure(monkeypatch, tmp_path):
    """The figure plots.save draws, instead of only its PNG."""
    from matplotlib.figure import Figure

    drawn = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        original(self, *args, **kwargs)
        renderer = self.canvas.get_renderer()  # before plots.save closes the figure
        self.label_extents = [[label.get_window_extent(renderer) for label in ax.get_xticklabels()] for ax in self.axes]
        drawn.append(self)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return lambda tables: (plots.save(tables, tmp_path / "p.png"), drawn[-1])[1]


def test_the_time_axis_starts_at_zero_and_accuracy_is_the_test_accuracy(figure):
    sweep = Table("neurons", "neurons", [row("32", [3.60, 3.62], [0.84, 0.85]), row("64", [3.67, 3.67], [0.86, 0.86])])
    time_ax, accuracy_ax = figure([sweep]).axes
    assert time_ax.get_ylim()[0] == 0 and time_ax.get_ylim()[1] > 3.67
    assert accuracy_ax.get_ylabel() == "test accuracy"
    assert list(accuracy_ax.lines[0].get_ydata()) == pytest.approx([0.845, 0.86])  # not the training 0.99


def test_every_shape_label_fits_in_the_figure(figure):
    compare = Table(
        "compare",
        "shape",
        [
            row("1 process", [100], [0.85]),
            row("1 chief, 6 workers, 3 ps", [60], [0.84]),
            row("1 chief, 1 worker, 1 ps", [150], [0.84]),
        ],
    )
    drawn = figure([compare])
    for ax, extents in zip(drawn.axes, drawn.label_extents, strict=False):
        assert [label.get_text() for label in ax.get_xticklabels()][1] == "1 chief,\n6 workers, 3 ps"
        assert all(box.x0 >= 0 and box.x1 <= drawn.bbox.width for box in extents)


def test_the_time_left_counts_the_work_of_the_runs_to_come(monkeypatch, tmp_path, capsys):
    """A sweep over epochs 1, 2, 4: after the 1-epoch run took 10 s, 6 epochs are left: 60 s."""
    from test_targets import MemoryTarget  # runs that end at once, on a target written for the tests

    clock = iter([0.0, 10.0, 30.0])
    monkeypatch.setattr(experiments.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(MemoryTarget, "jobs", {})
    monkeypatch.setattr(
        experiments,
        "measured",
        lambda *a: {"metric": "accuracy", "loss": 0.0, "accuracy": 0.0, "seconds": 0.0, "examples_per_sec": 0.0},
    )
    specs = [JobSpec(name=f"e{n}", trainer={"epochs": n}) for n in (1, 2, 4)]
    runner = experiments.Runner(MemoryTarget(), {"steps": 3}, specs, str(tmp_path))
    for spec in specs:
        runner.run(spec, f"epochs={spec.trainer.epochs}")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "[1/3] epochs=1"
    assert lines[2] == "[2/3] epochs=2, about 1m00s left"  # 10 s for 1 epoch's work, 6 epochs to go
    assert lines[4] == "[3/3] epochs=4, about 40s left"  # 30 s for 3 epochs, 4 to go
