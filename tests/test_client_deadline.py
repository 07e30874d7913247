"""A real node's ClientApp ends when its message's time is up (the server no longer waits for the reply), and
not before; in simulation (one worker, many messages) nothing is stopped.
"""

from __future__ import annotations

import subprocess
import sys

from client.deadline import GIVE_UP_EXIT

BUSY_CLIENTAPP = """
import time, sys
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from client.deadline import within_deadline
TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = 1, 0, 1
msg = Message(RecordDict(), 7, MessageType.TRAIN, ttl=float(sys.argv[1]))
config = {"data-path": "/srv/site"} if sys.argv[2] == "node" else {"partition-id": 0}
context = Context(run_id=1, node_id=7, node_config=config, state=RecordDict(), run_config={})
within_deadline(msg, context, lambda m, c: time.sleep(float(sys.argv[3])) or m)
print("replied")
"""


def run_clientapp(ttl_s: float, where: str, busy_s: float) -> subprocess.CompletedProcess:
    """A ClientApp process busy for ``busy_s`` on a message that lives ``ttl_s``, on a node or in simulation."""
    return subprocess.run([sys.executable, "-c", BUSY_CLIENTAPP, str(ttl_s), where, str(busy_s)],
                          capture_output=True, text=True, timeout=60)


def test_a_node_clientapp_busy_past_its_messages_time_to_live_ends_then():
    done = run_clientapp(1.0, "node", 30.0)
    assert done.returncode == GIVE_UP_EXIT, done.stderr
    assert "replied" not in done.stdout and "stopping this ClientApp" in done.stderr


def test_a_clientapp_within_its_time_replies_and_simulation_workers_are_never_stopped():
    done = run_clientapp(10.0, "node", 0.2)
    assert (done.returncode, done.stdout.strip()) == (0, "replied"), done.stderr
    done = run_clientapp(0.5, "simulation", 1.5)
    assert (done.returncode, done.stdout.strip()) == (0, "replied"), done.stderr
