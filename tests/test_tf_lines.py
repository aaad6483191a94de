"""TensorFlow's repeated lines while a worker stays away, folded in what pmlctl shows (issue 26, item 12)."""

from __future__ import annotations

import logging

from deploy import view
from pml_trainer import liveness

# From a chief's log (TensorFlow 2.21) while worker 1 of a local job was killed again and again.
SAMPLE = (
    r"""
  epoch    step    loss     acc val_loss val_acc  seconds      ex/s
E0000 00:00:1796589920.522882   31627 context.cc:873] Failed to register function remotely due to recvmsg:Connection reset by peer
Additional GRPC error information from remote target /job:worker/replica:0/task:1 while calling /tensorflow.eager.EagerService/Enqueue:
:UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"recvmsg:Connection reset by peer"}
This could happen if the remote target has been disconnected from the client.
E0000 00:00:1796589920.580953   31627 context.cc:911] Failed to remove function remotely due to failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:53559: Failed to connect to remote host: Connection refused
Additional GRPC error information from remote target /job:worker/replica:0/task:1 while calling /tensorflow.eager.EagerService/Enqueue:
:UNKNOWN:Error received from peer  {grpc_message:"failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:53559: Failed to connect to remote host: Connection refused", grpc_status:14}
This could happen if the remote target has been disconnected from the client.
ERROR:tensorflow:Worker /job:worker/replica:0/task:1 failed with UnavailableError():Failed copying input tensor from /job:chief/replica:0/task:0/device:CPU:0 to /job:worker/replica:0/task:1/device:CPU:0 in order to run __inference_train_block_1146: failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:53559: Failed to connect to remote host: Connection refused
Additional GRPC error information from remote target /job:worker/replica:0/task:1 while calling /tensorflow.eager.EagerService/Enqueue:
:UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:53559: Failed to connect to remote host: Connection refused"} [Op:__inference_train_block_1146]
ERROR:tensorflow:Worker /job:worker/replica:0/task:1 failed with UnavailableError():Failed copying input tensor from /job:chief/replica:0/task:0/device:CPU:0 to /job:worker/replica:0/task:1/device:CPU:0 in order to run __inference_train_block_1146: failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:53559: Failed to connect to remote host: Connection refused
Additional GRPC error information from remote target /job:worker/replica:0/task:1 while calling /tensorflow.eager.EagerService/Enqueue:
:UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:53559: Failed to connect to remote host: Connection refused"} [Op:__inference_train_block_1146]
E0000 00:00:1796589921.062601   31627 context.cc:873] Failed to register function remotely due to failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:53559: Failed to connect to remote host: Connection refused
Additional GRPC error information from remote target /job:worker/replica:0/task:1 while calling /tensorflow.eager.EagerService/Enqueue:
:UNKNOWN:Error received from peer  {grpc_message:"failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:53559: Failed to connect to remote host: Connection refused", grpc_status:14}
This could happen if the remote target has been disconnected from the client.
E0000 00:00:1796589921.115541   31627 context.cc:911] Failed to remove function remotely due to failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:53559: Failed to connect to remote host: Connection refused
Additional GRPC error information from remote target /job:worker/replica:0/task:1 while calling /tensorflow.eager.EagerService/Enqueue:
:UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:53559: Failed to connect to remote host: Connection refused"}
This could happen if the remote target has been disconnected from the client.
E0000 00:00:1796589921.526782   31627 context.cc:873] Failed to register function remotely due to failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:53559: Failed to connect to remote host: Connection refused
  1/3       210  1.3742  0.5807   0.4106  0.9050     5.53      4859
E0000 00:00:1796589922.604439   31627 context.cc:873] Failed to register function remotely due to failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:53559: Failed to connect to remote host: Connection refused
Additional GRPC error information from remote target /job:worker/replica:0/task:1 while calling /tensorflow.eager.EagerService/Enqueue:
:UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:53559: Failed to connect to remote host: Connection refused"}
This could happen if the remote target has been disconnected from the client.
E0000 00:00:1796589922.606754   31627 context.cc:873] Failed to register function remotely due to failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:53559: Failed to connect to remote host: Connection refused
Additional GRPC error information from remote target /job:worker/replica:0/task:1 while calling /tensorflow.eager.EagerService/Enqueue:
:UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:53559: Failed to connect to remote host: Connection refused"}
This could happen if the remote target has been disconnected from the client.
:UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:53559: Failed to connect to remote host: Connection refused"}
"""
).lstrip("\n")
HINT = "TensorFlow line{} like this hidden; --verbose shows them"


def fold(lines: list[str]) -> list[str]:
    f = view.Fold()
    return [out for line in lines for out in f.line(line)] + f.end()


def test_a_burst_shows_its_first_message_then_a_count():
    lines = SAMPLE.splitlines()
    assert fold(lines) == [
        *lines[:5],  # the table's header, then the first message whole
        "... 19 more TensorFlow lines like this hidden; --verbose shows them",
        lines[24],  # the epoch row ends the run of hidden lines
        "... 9 more TensorFlow lines like this hidden; --verbose shows them",  # said when the log ends
    ]


def test_pmlctl_logs_folds_and_verbose_shows_every_line(capsys):
    chunks = [SAMPLE[:1000].encode(), SAMPLE[1000:].encode()]  # a chunk ends mid-line
    view.logs(iter(chunks), verbose=False)
    assert capsys.readouterr().out.splitlines() == fold(SAMPLE.splitlines())
    view.logs(iter(chunks), verbose=True)
    assert capsys.readouterr().out == SAMPLE


def test_a_burst_after_a_quiet_minute_is_shown_again():
    first, again = SAMPLE.splitlines()[1], SAMPLE.splitlines()[5]
    later = again.replace("00:00:1796589920", f"00:00:{1796589920 + int(view.BURST_GAP) + 5}")
    assert fold([first, again, later]) == [first, "... 1 more " + HINT.format(""), later]


def test_continuation_lines_of_other_messages_stay():
    line = "This could happen if the remote target has been disconnected from the client."
    assert fold(["something else", line]) == ["something else", line]


def test_the_chief_says_once_that_a_worker_is_lost(caplog):
    tf_log = logging.getLogger("tensorflow")
    said = liveness.SayLostWorkers()
    tf_log.addFilter(said)
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                tf_log.error("Worker %s failed with %r:%s", "/job:worker/replica:0/task:1", OSError("x"), "x")
    finally:
        tf_log.removeFilter(said)
    ours = [r.getMessage() for r in caplog.records if r.name == "trainer"]
    assert len(ours) == 1 and ours[0].startswith("worker-1 is lost (OSError): the other workers take its steps")
