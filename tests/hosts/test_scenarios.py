"""Issue 15's five scenarios: a real job on test hosts, one task per host, meets what a real
cluster does to it: names that resolve late, a worker's or a ps's link lost for 15 s, a chief cut
off for longer than --orphan-timeout, a slow link to the ps. Each asserts on what happened and
prints what it measured (`make test-hosts` shows it): the time to recover and the steps repeated.
"""

from __future__ import annotations

import re
import time

import pytest
from conftest import alive, latest_saved_step, processes_mentioning, wait_for

from hosts.scenario import (
    CKPT_EVERY,
    EPOCHS,
    STEPS_PER_EPOCH,
    HostJob,
    accuracy_line,
    assert_every_epoch_once,
    median_rate,
    report,
    result,
)
from pml_trainer import exits

pytestmark = [pytest.mark.hosts, pytest.mark.slow]
OUTAGE = 15.0  # seconds a link stays down
# The longest a worker whose link is lost may hold the whole job up: well inside OUTAGE, so that
# its work moves to the other worker during the outage rather than waiting for the link to return.
STALL = 10.0
LATE = 20.0  # seconds after the chief starts that the late names resolve
ORPHAN_TIMEOUT = 20.0


def until(moment: float) -> None:
    """Let the scenario's own time pass (an outage's length), not wait for an event."""
    time.sleep(max(moment - time.monotonic(), 0))


def assert_learned_as_undisturbed(model_dir, undisturbed) -> float:
    accuracy = result(model_dir)["test_accuracy"]
    assert abs(accuracy - undisturbed["accuracy"]) <= 0.02, (accuracy, undisturbed["accuracy"])
    return accuracy


def test_names_that_resolve_late_are_waited_for(hosts_env, undisturbed, tmp_path):
    """kubeflow/trainer#1458: a worker's and a ps's Service names resolve only 20 s after the chief
    starts. Nobody exits; the chief says whom it waits for and why, then trains as usual."""
    model_dir = tmp_path / "model"
    with HostJob("late-names", model_dir, hidden={"worker-1", "ps-0"}) as job:
        timeline = job.submit()
        chief_started = wait_for(lambda: timeline.when(r"started chief-0"), 60, "the chief to start")
        until(chief_started + LATE)
        # On a loaded machine the chief may still be importing TensorFlow: the race needs it waiting.
        wait_for(lambda: timeline.when(r"chief-0 \| waiting for"), 300, "the chief to wait for its peers")
        job.lab.publish("worker-1", "ps-0")
        published = time.monotonic()
        outcome = job.wait()
    assert outcome.exit_code == 0, job.output()[-3000:]
    waiting = timeline.matching(r"chief-0 \| waiting for \d of 3 tasks")
    assert waiting and all(
        "worker-1:2222 (its name does not resolve)" in line and "ps-0:2222 (its name does not resolve)" in line
        for line in waiting
    )
    training = timeline.when(r"chief-0 \| training mlp")
    assert training > published  # it waited for the names, and went on once they resolved
    assert [t["restarts"] for t in job.state()["tasks"]] == [0, 0, 0, 0]  # nobody exited meanwhile
    assert_every_epoch_once(model_dir)
    accuracy = assert_learned_as_undisturbed(model_dir, undisturbed)
    report(
        "late names",
        f"names resolved {published - chief_started:.1f} s after the chief started",
        f"recovered: training began {training - published:.1f} s after they resolved",
        "steps repeated: 0",
        "restarts: 0",
        accuracy_line(accuracy, undisturbed),
    )


def test_a_workers_lost_link_moves_its_work_to_the_other_worker(hosts_env, undisturbed, tmp_path):
    """Worker 1's link goes down for 15 s mid-epoch: ClusterCoordinator sees its closures fail
    (the chief's channels have keepalive), runs them on worker 0, and takes worker 1 back.

    One closure per checkpoint interval, so that the chief waits for every closure before each
    save: a closure caught on worker 1 by the cut then holds up the whole job until it fails, the
    case that decides how long a lost link costs.
    """
    model_dir = tmp_path / "model"
    with HostJob("worker-link", model_dir, steps_per_execution=CKPT_EVERY) as job:
        timeline = job.submit()
        down = job.cut_link_mid_epoch("worker-1")
        before = latest_saved_step(model_dir)  # the timeline may not have seen it yet
        until(down + OUTAGE)
        job.lab.link_up("worker-1")
        up = time.monotonic()
        outcome = job.wait()
    assert outcome.exit_code == 0, job.output()[-3000:]
    failed = r"Worker /job:worker/replica:0/task:1 failed with UnavailableError"
    noticed = timeline.when(failed, after=down)
    assert noticed is not None and noticed < up, "the coordinator did not notice the lost worker during the outage"
    during = timeline.step_at(up)
    assert during > before  # worker 0 trained on meanwhile: the job did not wait for worker 1
    last = timeline.checkpoint_after(down, beyond=EPOCHS * STEPS_PER_EPOCH - 1)  # training over
    stalled = timeline.longest_wait(down, min(up, last[0]) if last else up)
    assert stalled < STALL, f"training stood still for {stalled:.1f} s of the outage"
    assert [t["restarts"] for t in job.state()["tasks"]] == [0, 0, 0, 0]  # nothing restarted
    assert_every_epoch_once(model_dir)
    accuracy = assert_learned_as_undisturbed(model_dir, undisturbed)
    closures = len(timeline.matching(failed))
    per_closure = job.spec.trainer.steps_per_execution
    report(
        "worker link down 15 s",
        f"recovered: its closures failed and went to worker 0 {noticed - down:.1f} s after the link went down",
        f"training stood still for at most {stalled:.1f} s",
        f"{during - before} steps trained during the outage",
        f"steps repeated: at most {closures * per_closure} ({closures} closures run again)",
        "restarts: 0",
        accuracy_line(accuracy, undisturbed),
    )


def test_a_lost_ps_link_restarts_the_chief_from_its_latest_checkpoint(hosts_env, undisturbed, tmp_path):
    """The ps's link goes down for 15 s: the chief's watch finds it silent, the chief exits 175,
    and its restart waits for the ps and resumes from the checkpoint that was latest."""
    model_dir = tmp_path / "model"
    with HostJob("ps-link", model_dir) as job:
        timeline = job.submit()
        down = job.cut_link_mid_epoch("ps-0")
        lost = wait_for(
            lambda: timeline.when(r"chief-0 \| lost a peer \(ps-0:2222 has accepted no connection for 10s", after=down),
            OUTAGE,
            "the chief to find the ps silent",
        )
        latest = latest_saved_step(model_dir)  # after the chief left: no save was under way any more
        until(down + OUTAGE)
        job.lab.link_up("ps-0")
        up = time.monotonic()
        outcome = job.wait()
    assert outcome.exit_code == 0, job.output()[-3000:]
    chief_codes = job.chief_exits()
    # A restarted chief may meet the ps's connection to the chief that died while the link was
    # down (its reset never arrived): its first exchange fails, and the next restart goes on.
    assert chief_codes and set(chief_codes) == {exits.PEER_LOST} and len(chief_codes) <= 3, chief_codes
    resumed = [int(s) for s in re.findall(r"resumed from checkpoint at step (\d+)", job.output())]
    assert resumed and set(resumed) == {latest}  # no checkpoint lost: the one that was latest when the ps went
    assert_every_epoch_once(model_dir)  # no epoch counted twice
    accuracy = assert_learned_as_undisturbed(model_dir, undisturbed)
    recovered = timeline.checkpoint_after(up, beyond=latest)
    assert recovered is not None
    report(
        "ps link down 15 s",
        f"the chief exited 175 {lost - down:.1f} s after the link went down",
        f"recovered: first new checkpoint {recovered[0] - up:.1f} s after it came back",
        f"chief restarts: {len(chief_codes)}",
        f"steps repeated: at most {CKPT_EVERY} (resumed at step {latest}, the latest checkpoint)",
        accuracy_line(accuracy, undisturbed),
    )


def test_a_chief_cut_off_past_the_orphan_timeout_ends_the_job_and_a_relaunch_resumes(hosts_env, undisturbed, tmp_path):
    """The chief's link goes down for longer than --orphan-timeout: each server gives up on it
    with code 4, the job fails and nothing is left running; a relaunch resumes it."""
    model_dir = tmp_path / "model"
    with HostJob("chief-link", model_dir, orphan_timeout=ORPHAN_TIMEOUT) as job:
        timeline = job.submit()
        down = job.cut_link_mid_epoch("chief-0")
        outcome = job.wait(timeout=ORPHAN_TIMEOUT + 180)
        ended = time.monotonic()
        latest = latest_saved_step(model_dir)
        tasks = {t["role"]: t for t in job.state()["tasks"] if t["role"] != "worker"}
        workers = [t for t in job.state()["tasks"] if t["role"] == "worker"]
        assert outcome.exit_code == exits.CHIEF_FAILED, job.output()[-3000:]
        assert [(t["exit_code"], t["restarts"]) for t in (tasks["ps"], *workers)] == [(exits.CHIEF_FAILED, 0)] * 3
        assert tasks["chief"]["ended"] == "on SIGTERM"
        assert [pid for pid in (t["pid"] for t in job.state()["tasks"]) if alive(pid)] == []
        assert processes_mentioning(str(model_dir)) == []
        gave_up = timeline.when(r"(worker|ps) \d: the chief failed or vanished; exiting")
        failed = timeline.when(r"exited with code 4: it lost the chief")
        job.lab.link_up("chief-0")
        relaunch = job.submit()
        relaunched = time.monotonic()
        outcome = job.wait()
    assert outcome.exit_code == 0, job.output()[-3000:]
    resumed = [int(s) for s in re.findall(r"resumed from checkpoint at step (\d+)", job.output())]
    assert resumed == [latest]
    assert_every_epoch_once(model_dir)
    accuracy = assert_learned_as_undisturbed(model_dir, undisturbed)
    recovered = relaunch.checkpoint_after(relaunched, beyond=latest)
    report(
        "chief cut off",
        f"the servers gave up {gave_up - down:.1f} s after the link went down "
        f"(--orphan-timeout {ORPHAN_TIMEOUT:.0f}), the supervisor failed the job at {failed - down:.1f} s "
        f"and it ended at {ended - down:.1f} s",
        f"recovered: the relaunch's first new checkpoint {recovered[0] - relaunched:.1f} s after it started",
        f"steps repeated: at most {CKPT_EVERY} (resumed at step {latest}, the latest checkpoint)",
        accuracy_line(accuracy, undisturbed),
    )


def test_a_slow_ps_link_slows_the_job_but_does_not_break_it(hosts_env, undisturbed, tmp_path):
    """tbf at 100 Mbit/s each way on the ps's link, for the whole job."""
    rate = 100
    model_dir = tmp_path / "model"
    with HostJob("slow-link", model_dir) as job:
        job.lab.shape("ps-0", rate)
        before = job.lab.counters("ps-0")
        timeline = job.submit()
        outcome = job.wait()
        after = job.lab.counters("ps-0")
    assert outcome.exit_code == 0, job.output()[-3000:]
    assert [t["restarts"] for t in job.state()["tasks"]] == [0, 0, 0, 0]
    assert_every_epoch_once(model_dir)
    accuracy = assert_learned_as_undisturbed(model_dir, undisturbed)
    seconds = timeline.when(r"chief-0 \| test loss") - timeline.when(r"chief-0 \| training mlp")
    mbits = {way: (after[way] - before[way]) * 8 / seconds / 1e6 for way in ("sent", "received")}
    assert max(mbits.values()) <= rate * 1.05  # the shaper held, both ways
    slowed = median_rate(model_dir)
    assert slowed < undisturbed["rate"]
    report(
        "ps link at 100 Mbit/s",
        f"{slowed:.0f} examples/s ({undisturbed['rate']:.0f} undisturbed, {undisturbed['rate'] / slowed:.1f}x slower)",
        f"the ps link carried {mbits['sent']:.0f} Mbit/s out and {mbits['received']:.0f} in, on average",
        "nothing to recover from",
        "steps repeated: 0",
        "restarts: 0",
        accuracy_line(accuracy, undisturbed),
    )
