"""pml_trainer.readings: what each task of `pmlctl plan`'s probe says it spent, and the probe
reading it back through a real bucket, from a real job's processes (issue 27: `-t k8s` probes
read their pods this way, as no process of theirs runs here)."""

from __future__ import annotations

import itertools
import os
import socket
import time

import pytest
from storage_servers import remote, server  # noqa: F401 (fixtures)

from deploy import calibrate
from deploy.local import LocalTarget
from deploy.spec import JobSpec
from pml_trainer import readings


def test_a_task_records_the_cpu_it_spends_and_publishes_it_whole(tmp_path, monkeypatch):
    monkeypatch.setenv(readings.ENV, "1")
    monkeypatch.setattr(readings, "_recorder", None)
    readings.start("worker-0", str(tmp_path), None)
    began = time.process_time()
    while time.process_time() - began < 0.3:  # work to be counted, not a wait
        pass
    readings.finish()
    [found] = readings.load({"worker-0.json": (tmp_path / "readings" / "worker-0.json").read_bytes()})
    assert found.samples[-1][1] - found.samples[0][1] >= 0.3
    assert len(found.samples) > 2  # the sampler's own, between the first and the last
    assert (found.task, found.role, found.space) == ("worker-0", "worker", readings.space())
    assert found.cpus == len(os.sched_getaffinity(0)) and found.memory > 10e6


def test_without_the_variable_a_task_records_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(readings.ENV, raising=False)
    monkeypatch.setattr(readings, "_recorder", None)
    readings.start("ps-0", str(tmp_path), None)
    readings.finish()
    assert not (tmp_path / "readings").exists()


def test_a_task_that_cannot_publish_says_so_once_and_exits_as_it_would(tmp_path, monkeypatch):
    """A full disk, or a folder a restart removed under it: the task's own work and exit come first."""
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(readings.ENV, "1")
    monkeypatch.setattr(readings, "_recorder", None)
    warned = []
    monkeypatch.setattr(readings.log, "warning", warned.append)
    readings.start("ps-0", str(blocked), None)
    readings._recorder.publish()
    readings.finish()
    assert len(warned) == 1 and warned[0].startswith("PML_READINGS: cannot publish this task's readings: ")


def test_a_slow_upload_leaves_no_gap_in_the_samples(tmp_path, monkeypatch):
    """The uploads have a thread of their own: a store that takes a second to answer must not stop
    the sampling, or the probe would have to refuse the task's readings."""

    class Slow:
        def put_bytes(self, data, name):
            time.sleep(1.0)  # the store's slowness itself, not a wait for anything

    monkeypatch.setattr(readings, "PUBLISH", 0.05)
    recorder = readings._Recorder("ps-0", str(tmp_path), None)
    recorder.store = Slow()
    recorder.begin()
    began = time.process_time()
    while time.process_time() - began < 1.5:  # work while an upload is under way
        pass
    recorder.stopped.set()
    times = [s[0] for s in recorder.doc["samples"]]
    assert max(b - a for a, b in itertools.pairwise(times)) < readings.MAX_GAP


def test_a_long_run_keeps_every_other_sample_and_samples_half_as_often(tmp_path, monkeypatch):
    monkeypatch.setattr(readings, "MOST_SAMPLES", 10)
    recorder = readings._Recorder("ps-0", str(tmp_path), None)
    first = recorder.doc["samples"][0]
    for t in range(1, 11):
        recorder.add([first[0] + t, float(t), 0.0, 0.0])
    assert len(recorder.doc["samples"]) == 6 and recorder.interval == 2 * readings.INTERVAL
    assert recorder.doc["samples"][0] == first  # the readings still reach back to the start


def test_readings_between_samples_are_interpolated_and_none_outside_them_or_across_a_gap():
    found = readings.Readings("ps-0", "h:1", "h", 2, "X", [[10.0, 1.0, 100.0, 5.0], [10.4, 3.0, 300.0, 7.0]])
    assert found.at(10.1) == pytest.approx((1.5, 150.0)) and found.at(10.0) == (1.0, 100.0)
    assert found.at(9.9) is None and found.at(10.5) is None and found.memory == 7.0
    gap = readings.Readings("ps-0", "h:1", "h", 2, "X", [[10.0, 1.0, 100.0, 5.0], [10.6, 3.0, 300.0, 7.0]])
    assert gap.at(10.3) is None  # 0.6 s between samples says nothing of the time between them
    assert gap.at(10.6) == (3.0, 300.0)  # a sample itself does, at the end of a gap too


def test_a_file_that_is_not_readings_is_named():
    with pytest.raises(ValueError, match=r"^readings/ps-0.json: not a task's readings"):
        readings.load({"readings/ps-0.json": b'{"task": "ps-0"}'})
    empty = b'{"task": "ps-0", "space": "h:1", "host": "h", "cpus": 2, "cpu_model": "X", "samples": [], "marks": []}'
    with pytest.raises(ValueError, match=r"^readings/ps-0.json: not a task's readings \(no samples\)"):
        readings.load({"readings/ps-0.json": empty})


@pytest.mark.parametrize("server", ["s3"], indirect=True)
def test_a_probe_of_a_ps_job_reads_what_its_tasks_spent_through_the_bucket(remote, pml_home):
    """A real 1 worker + 1 ps job whose model dir is a bucket, as on a cluster: each task's CPU,
    bytes and memory reach the probe through it, and the probe leaves nothing there."""
    spec = JobSpec(trainer={"model_dir": remote.uri("jobs/x")})
    parameter_bytes = sum(calibrate._check(spec)["variable_bytes"])
    found = calibrate._probe(LocalTarget(), spec, remote.uri("jobs/x"), "ps", 1, 1, 40, 54000)
    # A worker's step brings the weights in and sends the gradients out, each the parameters' size,
    # plus the protocols' framing; the job's namespace (its loopback) saw each byte once.
    assert 2.0 < found["bytes"] / parameter_bytes < 2.6, found
    # The worker computes through most of a step, and three tasks cannot spend more than the cores.
    assert 0.5 * found["step"] < found["cpu"] < 1.2 * len(os.sched_getaffinity(0)) * found["step"], found
    assert found["memory"] > 100e6 and found["ps_memory"] > 100e6
    assert (found["host"], found["steps"]) == (socket.gethostname(), 80)
    assert remote.store("jobs/x").list() == []
