"""Whether the other tasks of a parameter-server job answer: the chief waits until they all do,
and notices in bounded time when one stops.

TensorFlow's gRPC channels have no keepalive: GetChannelArguments in TensorFlow's
third_party/xla/xla/tsl/distributed_runtime/rpc/grpc_channel.cc sets only the message size and a
1 s reconnect backoff. An RPC to a task whose network went silent (a node's network drops; no
reset ever comes) so waits on TCP, which retransmits for about 15 minutes before it gives up. Two
remedies, both on the chief, which coordinates:

- gRPC keepalive on its channels, through TF_GRPC_DEFAULT_OPTIONS, which the same file's
  CreateDefaultChannelArguments reads once, when the first channel is made. A ping unanswered for
  KEEPALIVE_TIMEOUT_MS, or data unacknowledged as long (with keepalive on, gRPC sets the socket's
  TCP_USER_TIMEOUT to that timeout: grpc's src/core/lib/iomgr/socket_utils_common_posix.cc,
  grpc_set_socket_tcp_user_timeout), closes the connection, and its calls fail with UNAVAILABLE
  naming the task. ClusterCoordinator takes that error from a worker as a worker failure: it puts
  the closure back in the queue for another worker, and takes the worker back once it answers
  (tensorflow/python/distribute/coordinator/cluster_coordinator.py, Worker._process_closure and
  WorkerPreemptionHandler.wait_on_failure). A worker cut off for a while costs its closures in
  flight, not a stalled job.

  How long a cut-off worker can hold the job up (the chief waits for every closure before a
  checkpoint): the ping goes out at most KEEPALIVE_TIME_MS after the last bytes read (reads reset
  the ping timer: grpc's src/core/ext/transport/chttp2/transport/chttp2_transport.cc,
  maybe_reset_keepalive_ping_timer_locked), the connection closes KEEPALIVE_TIMEOUT_MS later, and
  the call is tried once more on a new connection, whose connect gives up after the same
  TCP_USER_TIMEOUT: at most KEEPALIVE_TIME_MS + 2 KEEPALIVE_TIMEOUT_MS in all. The interval does not
  make the servers' ping-abuse policy trip sooner: it counts pings closer than 5 minutes (any
  interval here), and a client sends at most 2 before it sends data again (grpc's
  chttp2/transport/ping_rate_policy.cc, max_pings_without_data).
- a watch on the parameter servers. A ps that is cut off stalls the workers' steps, whose calls
  to it wait on TCP, while the chief's own calls to the workers go on being answered: nothing
  fails. The chief instead tries a connection to every ps each second, and once one has not
  accepted any for PS_LOST_SECONDS, it exits for a restart (PEER_LOST); the restarted chief waits
  until the ps answers and resumes from the latest checkpoint, as after a ps that died.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from pml_trainer.log import log
from pml_trainer.tf_config import TFConfig

STARTUP_TIMEOUT = 600.0  # 10 servers on 2 cores take a while to import TensorFlow
SAY_EVERY = 15.0  # seconds between the lines that say who is still awaited
# A ps that accepts no connection for this long has lost its variables to the job. Well under the
# outages a restart is worth (a 15 s one is noticed), and 10 probes in a row: one probe's loss on a
# saturated link does not count.
PS_LOST_SECONDS = 10.0
PROBE_TIMEOUT = 2.0  # a connection's first SYN and its retransmission, 1 s later
# Short enough that a link lost for 15 s (the hosts tier's outage) moves the lost worker's work to
# the others during the outage: with 5 s and 5 s, a closure caught by the cut failed 11-16 s later.
# A 3 s timeout is still far above any round trip or acknowledgement delay of a live link.
KEEPALIVE_TIME_MS = 2000
KEEPALIVE_TIMEOUT_MS = 3000


class PeerLost(Exception):
    """A task did not answer in time; the chief exits for a restart (PEER_LOST)."""


def keep_alive() -> None:
    """Keepalive on every gRPC channel this process opens from now on (see the module's docstring).

    Options the user set in TF_GRPC_DEFAULT_OPTIONS are kept as they are, keepalive or not.
    """
    os.environ.setdefault(
        "TF_GRPC_DEFAULT_OPTIONS",
        f"grpc.keepalive_time_ms={KEEPALIVE_TIME_MS},grpc.keepalive_timeout_ms={KEEPALIVE_TIMEOUT_MS}",
    )


def wait_for_tasks(cfg: TFConfig, interrupted: Callable[[], bool]) -> bool:
    """Wait until every other training task of a ps job accepts connections, saying who is still
    missing and why; False if `interrupted()` first. Raises PeerLost after STARTUP_TIMEOUT.

    Mirrored workers need no wait: they start their servers inside the strategy, which waits.
    """
    if cfg.strategy != "parameter_server":
        return True
    others = [
        a
        for role, tasks in cfg.training_cluster.items()
        for i, a in enumerate(tasks)
        if (role, i) != (cfg.task_type, cfg.task_index)
    ]
    deadline, last_said = time.monotonic() + STARTUP_TIMEOUT, 0.0
    while True:
        missing = {address: why for address in others if (why := unanswered(address))}
        if not missing:
            return True
        if interrupted():
            return False
        if time.monotonic() > deadline:
            raise PeerLost(f"tasks never came up: {', '.join(missing)}")
        if time.monotonic() - last_said > SAY_EVERY:
            said = ", ".join(f"{address} ({why})" for address, why in list(missing.items())[:4])
            log.info(f"waiting for {len(missing)} of {len(others)} tasks: {said}")
            last_said = time.monotonic()
        time.sleep(0.5)


def watch_parameter_servers(cfg: TFConfig, on_lost: Callable[[str], None]) -> threading.Event:
    """Call `on_lost(reason)`, from a thread of its own, once a ps has accepted no connection for
    PS_LOST_SECONDS. The caller leaves the process from there: its main thread may be waiting in
    TensorFlow for an answer that never comes.

    Set the event returned once training is over: the servers then leave by themselves as soon
    as they are told, while the chief may still wait minutes for the evaluator's last word.
    """
    addresses = cfg.cluster.get("ps", [])
    over = threading.Event()

    def watch() -> None:
        answered = {address: time.monotonic() for address in addresses}
        while not over.wait(1.0):
            for address in addresses:
                why = unanswered(address)
                if not why:
                    answered[address] = time.monotonic()
                elif time.monotonic() - answered[address] > PS_LOST_SECONDS and not over.is_set():
                    on_lost(f"{address} has accepted no connection for {PS_LOST_SECONDS:.0f}s ({why})")
                    return

    if addresses:
        threading.Thread(target=watch, name="ps-watch", daemon=True).start()
    return over


def unanswered(address: str, timeout: float = PROBE_TIMEOUT) -> str:
    """Why `host:port` does not accept a connection now; "" when it does."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
        return ""
    except socket.gaierror:
        return "its name does not resolve"
    except ConnectionRefusedError:
        return "nothing listens there yet"
    except OSError:  # a timeout, an unreachable host
        return "no answer"


class SayLostWorkers(logging.Filter):
    """One line of the chief's own the first time ClusterCoordinator reports a worker failed
    (tensorflow/python/distribute/coordinator/cluster_coordinator.py logs `"Worker %s failed with
    %r:%s"` for each closure it loses there, and TensorFlow's C++ side several ERROR lines a second
    while the worker stays away; pmlctl folds those: deploy/view.py, Fold). Lets every record through."""

    def __init__(self) -> None:
        super().__init__()
        self.said: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Worker %s failed with %r:%s" and record.args:
            device = str(record.args[0])  # /job:worker/replica:0/task:1
            if device not in self.said:
                self.said.add(device)
                name = "worker-" + device.rsplit("task:", 1)[-1].split("/")[0]
                error = type(record.args[1]).__name__ if len(record.args) > 1 else "an error"
                log.warning(
                    f"{name} is lost ({error}): the other workers take its steps, and the chief takes it "
                    "back once it answers again; TensorFlow repeats errors about it meanwhile (pmlctl "
                    "folds them; --verbose shows every line)"
                )
        return True


def say_lost_workers() -> None:
    """Install SayLostWorkers on TensorFlow's Python logger (the chief, under ParameterServerStrategy)."""
    logging.getLogger("tensorflow").addFilter(SayLostWorkers())
