"""A job on test hosts for the scenarios, and what it did, timed as it happened.

Every scenario runs the same job: 1 chief, 2 workers and 1 ps on the real fashion_mnist, small
enough for the tier to take minutes, with a checkpoint every CKPT_EVERY steps and the learning
rate on a cosine to 0, so that undisturbed runs agree within a fraction of a point (as in
tests/test_faults.py) and "within 2 points" measures the disturbance.
"""

from __future__ import annotations

import json
import pathlib
import re
import threading
import time

from conftest import latest_saved_step, metrics, wait_for

from deploy import jobs
from deploy.spec import JobSpec
from hosts.network import Lab
from hosts.supervise import HostTarget, names

EXAMPLES, EPOCHS, BATCH, CKPT_EVERY = 30000, 3, 128, 40
STEPS_PER_EPOCH = int(EXAMPLES * 0.9) // BATCH  # the trainer holds 10% out for validation
TRAINER = {
    "dataset": "fashion_mnist",
    "train_examples": EXAMPLES,
    "epochs": EPOCHS,
    "batch_size": BATCH,
    "lr_decay": "cosine",
    "seed": 7,
    "checkpoint_every_steps": CKPT_EVERY,
}
OPTIONS = {"max_restarts": 6, "verbose": False}


class Timeline:
    """The job's output lines and its latest checkpoint's step, each with the time it was seen."""

    def __init__(self, output: pathlib.Path, model_dir: pathlib.Path):
        self.lines: list[tuple[float, str]] = []
        self.checkpoints: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, args=(output, model_dir), daemon=True)
        self._thread.start()

    def _follow(self, output: pathlib.Path, model_dir: pathlib.Path) -> None:
        while not output.exists() and not self._stop.is_set():
            time.sleep(0.05)
        with open(output, errors="replace") as f:
            partial = ""
            while True:
                stopping = self._stop.is_set()  # then one last read: what came before the stop is seen
                partial += f.read()
                *complete, partial = partial.split("\n")
                now = time.monotonic()
                self.lines += [(now, line) for line in complete]
                step = latest_saved_step(model_dir)
                if not self.checkpoints or step != self.checkpoints[-1][1]:
                    self.checkpoints.append((now, step))
                if stopping:
                    return
                time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def when(self, pattern: str, after: float = 0.0) -> float | None:
        """When the first line matching `pattern` appeared after `after`."""
        return next((t for t, line in self.lines if t > after and re.search(pattern, line)), None)

    def matching(self, pattern: str) -> list[str]:
        return [line for _, line in self.lines if re.search(pattern, line)]

    def checkpoint_after(self, moment: float, beyond: int) -> tuple[float, int] | None:
        """The first checkpoint past step `beyond` seen after `moment`: (when it was seen, its step)."""
        return next(((t, step) for t, step in self.checkpoints if t > moment and step > beyond), None)

    def longest_wait(self, start: float, end: float) -> float:
        """The longest time within [start, end] that training went without a new checkpoint."""
        seen = [t for t, _ in self.checkpoints if start < t <= end]
        return max(b - a for a, b in zip([start, *seen], [*seen, end], strict=False))

    def step_at(self, moment: float) -> int:
        """The latest checkpoint's step at `moment`."""
        return max([step for t, step in self.checkpoints if t <= moment], default=0)


class HostJob:
    """The scenario job, on hosts of its own (those in `hidden` unresolvable until published)."""

    def __init__(self, name: str, model_dir: pathlib.Path, hidden: set[str] = frozenset(), **trainer):
        self.name, self.model_dir = name, model_dir
        self.spec = JobSpec.model_validate(
            {
                "name": name,
                "replicas": {"workers": 2, "ps": 1},
                "trainer": {**TRAINER, **trainer, "model_dir": str(model_dir)},
            }
        )
        self.lab = Lab(names(self.spec), hidden=hidden)
        self.target = HostTarget(self.lab)
        self.handle = None
        self.timelines: list[Timeline] = []

    def __enter__(self) -> HostJob:
        return self

    def __exit__(self, *_) -> None:
        try:
            record = jobs.read(self.name)
            if self.handle is not None and record is not None and not record.finished:
                self.target.delete(self.handle)  # a test that failed midway: stop what still runs
        finally:
            for timeline in self.timelines:
                timeline.stop()
            self.lab.close()

    def submit(self) -> Timeline:
        """Start the job (again, for a relaunch); its timeline from now on."""
        for timeline in self.timelines:
            timeline.stop()
        output = jobs.job_dir(self.name) / "output.log"
        output.unlink(missing_ok=True)  # a relaunch's timeline starts with its own lines
        self.handle = self.target.submit(self.target.plan(self.spec, OPTIONS))
        self.timelines.append(Timeline(output, self.model_dir))
        return self.timelines[-1]

    def cut_link_mid_epoch(self, host: str) -> float:
        """Cut `host`'s link once the first checkpoint is saved, in the first epoch; return when."""
        wait_for(lambda: latest_saved_step(self.model_dir) >= CKPT_EVERY, 300, "the first checkpoint")
        self.lab.link_down(host)
        return time.monotonic()

    def wait(self, timeout: float = 600):
        outcome = self.target.wait(self.handle, timeout)
        assert not outcome.timed_out, f"{outcome.message}\n{self.output()[-3000:]}"
        self.timelines[-1].stop()  # after a last read of the output
        return outcome

    def output(self) -> str:
        return (jobs.job_dir(self.name) / "output.log").read_text(errors="replace")

    def state(self) -> dict:
        return json.loads((jobs.job_dir(self.name) / "job.json").read_text())

    def task(self, role: str) -> dict:
        return next(t for t in self.state()["tasks"] if t["role"] == role)

    def chief_exits(self) -> list[int]:
        """The exit codes the supervisor restarted the chief after, in order."""
        return [int(code) for code in re.findall(r"chief-0 exited with code (\d+); restarting it", self.output())]


def result(model_dir: pathlib.Path) -> dict:
    return json.loads((model_dir / "result.json").read_text())


def assert_every_epoch_once(model_dir: pathlib.Path) -> None:
    """One row per epoch, in order, at the planned steps; the planned number of steps trained."""
    rows = metrics(model_dir)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert [r["step"] for r in rows] == [STEPS_PER_EPOCH * k for k in range(1, EPOCHS + 1)]
    assert result(model_dir)["steps"] == EPOCHS * STEPS_PER_EPOCH


def median_rate(model_dir: pathlib.Path) -> float:
    """Median examples/s of the epochs after the first (which pays for tracing)."""
    rates = sorted(r["examples_per_sec"] for r in metrics(model_dir)[1:])
    return rates[len(rates) // 2]


def report(scenario: str, *facts: str) -> None:
    """One line per scenario with what it measured; `make test-hosts` shows them (-s)."""
    print(f"\nmeasured [{scenario}]: {'; '.join(facts)}", flush=True)


def accuracy_line(accuracy: float, undisturbed: dict) -> str:
    return f"test accuracy {accuracy:.4f} ({undisturbed['accuracy']:.4f} undisturbed)"
