"""trainer/liveness.py without TensorFlow: who is awaited and why, the watch on the parameter
servers, and the keepalive the chief's channels get. The hosts tier (tests/hosts/) runs them on
real jobs whose links go down."""

from __future__ import annotations

import os
import socket
import threading
import time

from pml_trainer import liveness
from pml_trainer.tf_config import TFConfig


def ps_job(*ps: str) -> TFConfig:
    return TFConfig({"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"], "ps": list(ps)}, "chief", 0)


def full_listener() -> tuple[socket.socket, socket.socket]:
    """A port whose queue of connections is full: the kernel drops every SYN, as a lost link does."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    return listener, socket.create_connection(listener.getsockname())


def test_each_unanswered_address_says_why():
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        assert liveness.unanswered(f"127.0.0.1:{port}") == ""
    assert liveness.unanswered(f"127.0.0.1:{port}") == "nothing listens there yet"
    assert liveness.unanswered("no-such-host.invalid:2222") == "its name does not resolve"
    listener, filler = full_listener()
    with listener, filler:
        assert liveness.unanswered(f"127.0.0.1:{listener.getsockname()[1]}", timeout=0.3) == "no answer"


def test_the_chief_says_whom_it_waits_for_and_why_and_stops_on_sigterm(capsys):
    with socket.create_server(("127.0.0.1", 0)) as up:
        cfg = TFConfig(
            {"chief": ["127.0.0.1:1"], "worker": [f"127.0.0.1:{up.getsockname()[1]}"], "ps": ["late-ps.invalid:2222"]},
            "chief",
            0,
        )
        asked = []
        assert liveness.wait_for_tasks(cfg, interrupted=lambda: asked.append(1) or len(asked) > 1) is False
    assert "waiting for 1 of 2 tasks: late-ps.invalid:2222 (its name does not resolve)" in capsys.readouterr().err


def test_mirrored_workers_and_a_lone_process_do_not_wait():
    mirrored = TFConfig({"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]}, "chief", 0)
    assert liveness.wait_for_tasks(mirrored, interrupted=lambda: True) is True


def test_a_parameter_server_that_stops_accepting_connections_is_reported_lost(monkeypatch):
    monkeypatch.setattr(liveness, "PS_LOST_SECONDS", 1.0)
    monkeypatch.setattr(liveness, "PROBE_TIMEOUT", 0.3)
    listener, filler = full_listener()
    lost = threading.Event()
    reasons = []
    with socket.create_server(("127.0.0.1", 0)) as answering:
        watched = [f"127.0.0.1:{answering.getsockname()[1]}", f"127.0.0.1:{listener.getsockname()[1]}"]
        began = time.monotonic()
        liveness.watch_parameter_servers(ps_job(*watched), lambda reason: (reasons.append(reason), lost.set()))
        assert lost.wait(timeout=15)
    listener.close()
    filler.close()
    assert time.monotonic() - began >= 1.0
    assert reasons == [f"{watched[1]} has accepted no connection for 1s (no answer)"]


def test_parameter_servers_that_leave_once_training_is_over_are_not_lost(monkeypatch):
    """They exit as soon as the chief says training is over, while the chief may still wait
    minutes for the evaluator: that is not a ps lost, and the chief must exit 0, not 175."""
    monkeypatch.setattr(liveness, "PS_LOST_SECONDS", 0.5)
    lost = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as ps:
        over = liveness.watch_parameter_servers(ps_job(f"127.0.0.1:{ps.getsockname()[1]}"), lambda _: lost.set())
        over.set()
    assert not lost.wait(timeout=3.0)  # before: reported lost 0.5 s after the ps left


def test_the_chief_keeps_its_channels_alive_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("TF_GRPC_DEFAULT_OPTIONS", raising=False)
    liveness.keep_alive()
    assert os.environ["TF_GRPC_DEFAULT_OPTIONS"] == "grpc.keepalive_time_ms=2000,grpc.keepalive_timeout_ms=3000"
    monkeypatch.setenv("TF_GRPC_DEFAULT_OPTIONS", "grpc.max_receive_message_length=100")
    liveness.keep_alive()
    assert os.environ["TF_GRPC_DEFAULT_OPTIONS"] == "grpc.max_receive_message_length=100"
