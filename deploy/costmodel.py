"""What a training step costs in time: compute, transfers, and waiting on a shared link.

One source of truth for the cost model that bench/network_cost.py checked against measured jobs on
the test hosts (bench/RESULTS.md, "What the network costs a parameter-server job"); the bench
imports it from here, and `pmlctl plan` predicts with it. Pure Python: pmlctl never imports
TensorFlow.

Parameter servers. One worker's step reads every weight from the ps (d_in bytes into the worker),
computes, and sends its gradients to the ps (d_out bytes), where the optimizer applies them; the
next step reads the weights that update wrote, so the three follow each other. With the ps's link
at R bytes/s each way, T_in = d_in / R, T_out = d_out / R and k round trips on the critical path:

    alone      = c + T_in + T_out + k x RTT
    t_step     = alone + (W - 1) x (T_in^2 + T_out^2) / alone
    examples/s = min(W x B / t_step,  B x R / max(d_in, d_out))

The second term of t_step: a transfer that meets another worker's in the same direction shares the
link with it; nothing keeps the workers in step or apart, so two transfers of length T meet in 2T
of every `alone` seconds and each then loses T/2. The last term: W transfers in one direction pass
at most R together. bench/network_cost.py's docstring derives each term.

Two refinements from `pmlctl plan`'s check on the test hosts (bench/plan_accuracy.py, issue 27):
  - the chain: the serial legs are only the largest variable's (`chain` = its share of the bytes,
    chain_share below); the other variables' transfers pass beside it and beside the compute:
        alone = max(c + chain x (T_in + T_out) + k x RTT,  T_in,  T_out)
    and a chain transfer meets another worker's whole transfer: the second term takes chain x
    (T_in^2 + T_out^2). At 100 Mbit/s one worker's step measured 77 ms where carrying every byte
    in and then out takes 86 ms at the link's payload rate: the serial model was 14% low there;
  - the payload: a link's egress rate counts frames, the transfers' bytes are their payload
    (PAYLOAD below); `pmlctl plan` gives the model a machine's egress times PAYLOAD.
With chain = 1 (the default) the algebra is the one bench/network_cost.py checked.

Two generalisations for `pmlctl plan`, which leave that algebra as it was when they are off:
  - several ps: TensorFlow places whole variables on the ps round-robin (ParameterServerStrategy
    without a variable_partitioner, as the trainer builds it: trainer/loop.py), so the ps holding
    the largest `share` of the bytes carries share x d on its link, and the worker's own link,
    at its own rate, carries all of d;
  - mirrored workers: a ring all-reduce of P bytes over N replicas sends and receives
    2 (N - 1) / N x P per replica, in 2 (N - 1) steps that each wait a round trip (Patarasuk and
    Yuan, "Bandwidth optimal all-reduce algorithms for clusters of workstations", JPDC 2009;
    TensorFlow's CollectiveAllReduce on CPUs uses a ring), plus a fixed cost per step that the
    calibration measures (bench/RESULTS.md measured 5.8-6.6 ms for the MLP's 470 KB on loopback,
    almost all of it not the bytes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

# Round trips on a ps step's critical path: each Recv is asked for as soon as its op runs, before
# the sender has the value, so a step's dozen RecvTensor RPCs cost one leg for the weights and one
# for the gradients (bench/network_cost.py says where in TensorFlow's sources).
ROUND_TRIPS = 1
# A link's rate counts the frames it sends; a transfer's bytes are what they carry. A 1500-byte MTU
# with TCP timestamps puts 1448 bytes of payload in a frame of 1514 (the Ethernet header counted, as
# a NIC's rate and tbf count it): bulk TCP gets 96 Mbit/s of the test hosts' 100 Mbit/s links and
# 936-944 Mbit/s of 1 Gbit/s (bench/RESULTS.md). The calibration counts payload (the loopback's
# 64 KiB frames add under 0.1%), so a machine's egress carries this share of it.
PAYLOAD = 1448 / 1514


@dataclass(frozen=True)
class Parts:
    """Where one worker's step goes, in seconds."""

    compute: float
    transfer: float  # its own transfers and round trips
    waiting: float  # on the shared link: other workers' transfers, or the link full

    @property
    def total(self) -> float:
        return self.compute + self.transfer + self.waiting


@dataclass(frozen=True)
class Model:
    """A parameter-server job's step (see the module's docstring)."""

    workers: int
    compute: float  # c: a worker's step, transfers and round trip left out (seconds)
    d_in: float  # bytes per step into the worker that takes it
    d_out: float
    rtt: float
    share: float = 1.0  # the largest fraction of those bytes one ps serves
    chain: float = 1.0  # the fraction of those bytes whose transfers lie on the step's critical path

    def _legs(self, rate: float, worker_rate: float | None) -> tuple[float, float, float, float]:
        """(T_in, T_out) of the worker, and (T_in, T_out) on the busiest ps's link."""
        own = rate if worker_rate is None else worker_rate
        ps_in, ps_out = self.share * self.d_in / rate, self.share * self.d_out / rate
        return max(ps_in, self.d_in / own), max(ps_out, self.d_out / own), ps_in, ps_out

    def _alone(self, t_in: float, t_out: float) -> float:
        """A worker's step with the link to itself: its chain's transfers follow its compute, the
        rest pass beside them; the link still carries every byte of the step each way."""
        return max(self.compute + self.chain * (t_in + t_out) + ROUND_TRIPS * self.rtt, t_in, t_out)

    def _meeting(self, ps_in: float, ps_out: float) -> float:
        # A chain transfer of length chain x T meets another worker's whole transfer (T) in
        # (1 + chain) T of every `alone`, and loses about half the shorter then: chain x T^2 / alone.
        return (self.workers - 1) * self.chain * (ps_in**2 + ps_out**2)

    def parts(self, rate: float, worker_rate: float | None = None) -> Parts:
        """One worker's step with the busiest ps's link at `rate` bytes/s and its own at `worker_rate`
        (the same when not given); waiting includes the link's cap on all workers together."""
        t_in, t_out, ps_in, ps_out = self._legs(rate, worker_rate)
        alone = self._alone(t_in, t_out)
        transfer = alone - self.compute
        step = alone + self._meeting(ps_in, ps_out) / alone
        capped = self.share * max(self.d_in, self.d_out) / rate * self.workers  # W steps through one link
        return Parts(self.compute, transfer, max(step, capped) - alone)

    def step_seconds(self, rate: float, worker_rate: float | None = None) -> float:
        """One worker's step, the other workers' transfers sharing the ps's link (the cap left out)."""
        t_in, t_out, ps_in, ps_out = self._legs(rate, worker_rate)
        alone = self._alone(t_in, t_out)
        return alone + self._meeting(ps_in, ps_out) / alone

    def examples_per_sec(self, batch: int, rate: float, worker_rate: float | None = None) -> float:
        cap = batch * rate / (self.share * max(self.d_in, self.d_out))
        return min(self.workers * batch / self.step_seconds(rate, worker_rate), cap)

    def with_compute_of(self, step: float, rate: float, worker_rate: float | None = None) -> Model:
        """The model whose step_seconds(rate) is `step`: t_step's equation solved for c."""
        t_in, t_out, ps_in, ps_out = self._legs(rate, worker_rate)
        meeting = self._meeting(ps_in, ps_out)
        alone = (step + math.sqrt(max(step**2 - 4 * meeting, 0.0))) / 2  # alone^2 - step x alone + meeting = 0
        return replace(self, compute=alone - self.chain * (t_in + t_out) - ROUND_TRIPS * self.rtt)


def allreduce_seconds(replicas: int, size: float, rate: float, rtt: float, overhead: float) -> float:
    """One ring all-reduce of `size` bytes over `replicas` (see the module's docstring); 0 for one."""
    if replicas < 2:
        return 0.0
    return overhead + ring_bytes(replicas, size) / rate + 2 * (replicas - 1) * rtt


def ring_bytes(replicas: int, size: float) -> float:
    """The bytes each replica sends (and receives) in one ring all-reduce of `size` bytes."""
    return 2 * (replicas - 1) / replicas * size


def round_robin_share(variable_bytes: list[int], servers: int) -> float:
    """The largest fraction of the bytes one of `servers` ps holds when variables are placed in
    turn, as ParameterServerStrategy places them without a partitioner."""
    total = sum(variable_bytes)
    if servers < 1 or not total:
        return 1.0
    held = [0] * servers
    for i, size in enumerate(variable_bytes):
        held[i % servers] += size
    return max(held) / total


def chain_share(variable_bytes: list[int] | tuple[int, ...]) -> float:
    """The fraction of a ps step's bytes on its critical path: the largest variable's (1 when the
    variables are not known). Each variable's read, gradient, send and update are ops of their own,
    joined only by their data, and TensorFlow's executor runs an op once its inputs are there; so
    the next step waits on the update of the variable whose transfers take longest, while the
    other variables' pass beside it and beside the compute (a link's two directions are separate)."""
    total = sum(variable_bytes)
    return max(variable_bytes) / total if total else 1.0
