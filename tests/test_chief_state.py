"""The chief's state endpoint: servers leave once it says the job is over, and it waits for them."""

from __future__ import annotations

import json
import threading
import time

from storage_servers import free_port

from pml_trainer import chief_state
from pml_trainer.options import TrainOptions


def test_the_chief_waits_for_each_peer_to_acknowledge_the_end():
    port = free_port()
    chief = chief_state.StateServer(port, {"ps:0", "worker:0"})
    assert chief_state.fetch_state("127.0.0.1", port, "ps:0") == {"state": chief_state.TRAINING, "step": 0}
    finishing = threading.Thread(target=chief.finish, args=(chief_state.DONE, 60.0))
    finishing.start()
    assert chief_state.wait_for_end("127.0.0.1", port, "ps:0", orphan_timeout=5) == chief_state.DONE
    # An answer is not an acknowledgement: a poller that timed out may never have read it.
    assert chief_state.fetch_state("127.0.0.1", port, "worker:0")["state"] == chief_state.DONE
    finishing.join(timeout=1.0)
    assert finishing.is_alive()
    assert chief_state.wait_for_end("127.0.0.1", port, "worker:0", orphan_timeout=5) == chief_state.DONE
    finishing.join(timeout=10.0)
    assert not finishing.is_alive()
    assert chief_state.fetch_state("127.0.0.1", port, "ps:0", timeout=1.0) is None  # the chief has left


def finishing_chief(**finish) -> tuple[int, threading.Thread, list[set[str]]]:
    """A chief with a ps and an evaluator, about to finish in a thread of its own (not started):
    its port, the thread, and the list that receives the tasks that never confirmed."""
    port = free_port()
    chief = chief_state.StateServer(port, {"ps:0", "evaluator:0"})
    missing: list[set[str]] = []
    return port, threading.Thread(target=lambda: missing.append(chief.finish(chief_state.DONE, **finish))), missing


def test_the_evaluator_confirms_the_end_after_its_final_work_and_the_chief_waits_for_it():
    port, finishing, missing = finishing_chief(linger=0.5, step=120, evaluator_linger=60.0)
    finishing.start()
    assert chief_state.wait_for_end("127.0.0.1", port, "ps:0", orphan_timeout=5) == chief_state.DONE
    final_work = threading.Event()
    replies: list[dict] = []

    def evaluate_final(reply: dict) -> bool:
        replies.append(reply)
        final_work.wait()  # the evaluation of the final checkpoint
        return True

    evaluator = threading.Thread(
        target=chief_state.wait_for_end,
        args=("127.0.0.1", port, "evaluator:0", 5),
        kwargs={"before_acknowledging": evaluate_final},
    )
    evaluator.start()
    # The server's 0.5 s are long past; the chief still waits, for the evaluator's final work.
    finishing.join(timeout=1.5)
    assert finishing.is_alive()
    assert replies == [{"state": chief_state.DONE, "step": 120}]  # the step of the last checkpoint
    final_work.set()
    evaluator.join(timeout=10.0)
    finishing.join(timeout=10.0)
    assert not finishing.is_alive()
    assert missing == [set()]


def test_the_chief_leaves_without_a_confirmation_once_its_time_is_up_or_sigterm_came():
    port, finishing, missing = finishing_chief(linger=30.0, step=7, evaluator_linger=1.0)
    began = time.monotonic()
    finishing.start()
    assert chief_state.wait_for_end("127.0.0.1", port, "ps:0", orphan_timeout=5) == chief_state.DONE
    # An evaluator whose final work did not make it does not confirm; the chief leaves at its bound.
    assert (
        chief_state.wait_for_end(
            "127.0.0.1", port, "evaluator:0", orphan_timeout=5, before_acknowledging=lambda reply: False
        )
        == chief_state.DONE
    )
    finishing.join(timeout=10.0)
    assert missing == [{"evaluator:0"}]
    assert 1.0 <= time.monotonic() - began < 10.0

    port = free_port()
    chief = chief_state.StateServer(port, {"evaluator:0"})
    assert chief.finish(chief_state.DONE, linger=600.0, evaluator_linger=600.0, interrupted=lambda: True) == {
        "evaluator:0"
    }
    assert chief_state.fetch_state("127.0.0.1", port, "evaluator:0", timeout=1.0) is None  # the chief has left


def test_a_busy_chief_is_never_reported_gone(monkeypatch, capsys):
    """It takes the connection but answers late (a SavedModel export on 2 busy cores)."""
    import socket

    monkeypatch.setattr(chief_state, "POLL_TIMEOUT", 0.2, raising=False)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    slow_polls = 3

    def answer(state: str) -> None:
        conn, _ = listener.accept()
        conn.recv(1024)
        body = json.dumps({"state": state, "step": 5}).encode()
        conn.sendall(
            b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        conn.close()

    def chief():
        answer(chief_state.TRAINING)  # seen alive first
        for _ in range(slow_polls):  # accept, say nothing until the poll has given up
            conn, _ = listener.accept()
            conn.recv(1024)
            conn.settimeout(5)
            try:
                conn.recv(1024)  # returns when the poller closes its side
            finally:
                conn.close()
        answer(chief_state.DONE)

    serving = threading.Thread(target=chief)
    serving.start()
    assert chief_state.wait_for_end("127.0.0.1", port, "ps:0", orphan_timeout=30, interval=0.01) == chief_state.DONE
    serving.join(10)
    listener.close()
    assert "stopped answering" not in capsys.readouterr().out + capsys.readouterr().err


def test_a_chief_nobody_can_connect_to_is_gone_after_the_orphan_timeout(monkeypatch, capsys):
    """Connections that time out were never taken (a lost link drops them): that chief is gone,
    not busy, and servers give up on it after --orphan-timeout (issue 15's chief cut off)."""
    import socket

    monkeypatch.setattr(chief_state, "POLL_TIMEOUT", 0.2, raising=False)
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = listener.getsockname()[1]
    filler = []

    def chief():
        conn, _ = listener.accept()  # seen alive first
        conn.recv(1024)
        body = json.dumps({"state": chief_state.TRAINING, "step": 0}).encode()
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        conn.close()
        # Never accepted again, this connection fills the queue: the kernel drops every later SYN.
        filler.append(socket.create_connection(("127.0.0.1", port)))

    serving = threading.Thread(target=chief)
    serving.start()
    outcome = []
    polling = threading.Thread(
        target=lambda: outcome.append(
            chief_state.wait_for_end("127.0.0.1", port, "ps:0", orphan_timeout=1.0, interval=0.5)
        ),
        daemon=True,
    )
    polling.start()
    polling.join(timeout=15)
    serving.join(10)
    for s in (*filler, listener):
        s.close()
    assert outcome == [chief_state.FAILED]  # before: taken for a busy chief, waited for without end
    assert "stopped answering" in capsys.readouterr().err


def test_a_chief_never_seen_is_given_up_after_the_first_contact_timeout(capsys):
    """Issue 26: a native ps whose chief Job failed before the chief came up waited forever, and its
    Job, never finished, was never collected by its TTL."""
    port = free_port()  # nobody listens there
    final = chief_state.wait_for_end(
        "127.0.0.1", port, "ps:0", orphan_timeout=5, interval=0.01, first_contact_timeout=0.2
    )
    assert final == chief_state.FAILED
    assert "ps:0: no chief answered at 127.0.0.1:" in capsys.readouterr().err


def test_the_wait_for_a_chief_never_seen_outlasts_a_node_and_an_image_pull():
    from deploy.k8s.state import IMAGE_PULL_GRACE

    default = chief_state.first_contact_timeout(TrainOptions().chief_start_timeout, 5.0)
    # Before: 600 s, the pull grace itself, with nothing left for the node the chief waits for.
    assert default == chief_state.CHIEF_START_SECONDS >= IMAGE_PULL_GRACE.total_seconds() + 300
    assert chief_state.first_contact_timeout(None, 3600.0) == 3600.0
    assert chief_state.first_contact_timeout(60.0, 5.0) == 60.0


def test_a_chief_gone_is_waited_for_longer_than_the_job_controller_waits_to_replace_it():
    """kubernetes pkg/controller/job/backoff_utils.go: a failed pod's replacement comes up to
    MaxJobPodFailureBackOff (10 min) later, and ignored preemptions lengthen that backoff too."""
    assert TrainOptions().orphan_timeout >= 600 + 300
