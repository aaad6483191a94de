"""The chief's state endpoint: servers leave once it says the job is over, and it waits for them."""

from __future__ import annotations

import threading

from storage_servers import free_port
from trainer import control


def test_the_chief_waits_for_each_peer_to_acknowledge_the_end():
    port = free_port()
    chief = control.StateServer(port, {"ps:0", "worker:0"})
    assert control.fetch_state("127.0.0.1", port, "ps:0") == {"state": control.TRAINING, "step": 0}
    finishing = threading.Thread(target=chief.finish, args=(control.DONE, 60.0))
    finishing.start()
    assert control.wait_for_end("127.0.0.1", port, "ps:0", orphan_timeout=5) == control.DONE
    # An answer is not an acknowledgement: a poller that timed out may never have read it.
    assert control.fetch_state("127.0.0.1", port, "worker:0")["state"] == control.DONE
    finishing.join(timeout=1.0)
    assert finishing.is_alive()
    assert control.wait_for_end("127.0.0.1", port, "worker:0", orphan_timeout=5) == control.DONE
    finishing.join(timeout=10.0)
    assert not finishing.is_alive()
    assert control.fetch_state("127.0.0.1", port, "ps:0", timeout=1.0) is None  # the chief has left
