"""The local supervisor's rules, with stand-in tasks instead of TensorFlow: fast, on any machine."""

from __future__ import annotations

import json
import sys
import threading

from deploy import local, netns
from deploy import supervisor as supervision
from deploy.spec import JobSpec
from pml_trainer import exits

# Runs until SIGTERM, then leaves as the trainer does after one.
WAITS = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(143)); time.sleep(600)"
GIVES_UP = f"import sys, time; time.sleep(0.3); sys.exit({exits.CHIEF_FAILED})"  # a server that saw no chief
# A chief that fails for good: it tells its servers (who exit 4 at once), lingers, then exits.
FAILS = f"import sys, time; time.sleep(1.5); sys.exit({exits.DATA_UNAVAILABLE})"


def supervise(tmp_path, monkeypatch, chief: str) -> tuple[int, dict]:
    """Run a job of a chief, a worker that gives up on it and a ps; its code and tasks by role."""
    monkeypatch.setenv(netns.MODE_VARIABLE, "host")  # stand-ins listen nowhere
    monkeypatch.setattr(supervision.signal, "signal", lambda *_: None)  # the supervisor runs in a thread here
    plan = local.plan(JobSpec(name="gave-up", replicas={"workers": 1, "ps": 1}), tmp_path)
    for task in plan.tasks:
        task.argv = [sys.executable, "-c", {"chief": chief, "worker": GIVES_UP}.get(task.role, WAITS)]
    supervisor = supervision.LocalSupervisor(plan, tmp_path, max_restarts=3, verbose=False)
    outcome = []
    running = threading.Thread(target=lambda: outcome.append(supervisor.run()), daemon=True)
    running.start()
    running.join(timeout=60)
    for task in plan.tasks:
        if task.proc and task.proc.poll() is None:
            task.proc.kill()
    assert outcome, "the supervisor did not end the job"
    return outcome[0], {t["role"]: t for t in json.loads((tmp_path / "job.json").read_text())["tasks"]}


def test_a_server_that_gave_up_on_a_running_chief_ends_the_job(tmp_path, monkeypatch):
    """As when the chief is cut off from its servers for longer than --orphan-timeout (issue 15):
    the chief, restarted or not, would wait in vain for a server that is never coming back."""
    monkeypatch.setattr(supervision, "ABANDONED_GRACE", 1.0)
    code, tasks = supervise(tmp_path, monkeypatch, chief=WAITS)
    assert code == exits.CHIEF_FAILED  # before: the supervisor waited for the chief, which waited in vain
    assert (tasks["worker"]["exit_code"], tasks["worker"]["restarts"]) == (exits.CHIEF_FAILED, 0)
    assert all(
        (tasks[role]["exit_code"], tasks[role]["ended"]) == (exits.PREEMPTED, "on SIGTERM") for role in ("chief", "ps")
    )


def test_servers_leaving_a_chief_that_failed_leave_the_job_its_code(tmp_path, monkeypatch):
    """Its servers exit 4 as soon as the chief says it failed, a moment before the chief exits."""
    code, tasks = supervise(tmp_path, monkeypatch, chief=FAILS)
    assert code == exits.DATA_UNAVAILABLE
    assert tasks["worker"]["exit_code"] == exits.CHIEF_FAILED and tasks["chief"]["restarts"] == 0


def test_every_local_task_knows_its_job(tmp_path):
    """The chief names its job in the pointers it writes (trainer/checkpoints.py, JOB_ENV)."""
    from pml_trainer.checkpoints import JOB_ENV

    plan = local.plan(JobSpec(name="named", replicas={"workers": 2, "ps": 1}), tmp_path)
    assert [t.env[JOB_ENV] for t in plan.tasks] == ["named"] * 4
