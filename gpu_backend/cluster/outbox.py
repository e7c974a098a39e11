"""Messages from the service to each instance's driver, each instance's written by a thread of its own.

A pipe write blocks once the pipe is full; a driver that stopped reading (a frozen rank, until
the heartbeat finds it) then holds up only its own instance's messages, never the event loop or
another instance's.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection


class Outbox:
    def __init__(self, num_instances: int, connections: Callable[[], list[Connection]]) -> None:
        """``connections``: the running world's driver pipes, by instance (a restarted world has new ones)."""
        self._connections = connections
        self._queues: list[queue.Queue] = [queue.Queue() for _ in range(num_instances)]
        for instance in range(num_instances):
            threading.Thread(target=self._write, args=(instance,), name=f"edgewise-instance-{instance}-send",
                             daemon=True).start()

    def put(self, instance: int, message: tuple) -> None:
        self._queues[instance].put(message)

    def clear(self) -> None:
        """Drop what was meant for a lost world."""
        for messages in self._queues:
            while not messages.empty():
                messages.get_nowait()

    def close(self) -> None:
        """Each thread leaves once it has written what it holds."""
        for messages in self._queues:
            messages.put(None)

    def _write(self, instance: int) -> None:
        while (message := self._queues[instance].get()) is not None:
            try:
                self._connections()[instance].send(message)
            except (OSError, EOFError, ValueError):  # the instance is gone; the monitor deals with it
                pass
