"""Messages from the service to each worker's driver, each worker's written by a thread of its own.

A pipe write blocks once the pipe is full; a driver that stopped reading (a frozen rank, until
the heartbeat finds it) then holds up only its own worker's messages, never the event loop or
another worker's.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection


class Outbox:
    def __init__(self, num_workers: int, connections: Callable[[], list[Connection]]) -> None:
        """``connections``: the running world's driver pipes, by worker (a restarted world has new ones)."""
        self._connections = connections
        self._queues: list[queue.Queue] = [queue.Queue() for _ in range(num_workers)]
        for worker in range(num_workers):
            threading.Thread(target=self._write, args=(worker,), name=f"edgewise-worker-{worker}-send",
                             daemon=True).start()

    def put(self, worker: int, message: tuple) -> None:
        self._queues[worker].put(message)

    def clear(self) -> None:
        """Drop what was meant for a lost world."""
        for messages in self._queues:
            while not messages.empty():
                messages.get_nowait()

    def close(self) -> None:
        """Each thread leaves once it has written what it holds."""
        for messages in self._queues:
            messages.put(None)

    def _write(self, worker: int) -> None:
        while (message := self._queues[worker].get()) is not None:
            try:
                self._connections()[worker].send(message)
            except (OSError, EOFError, ValueError):  # the worker is gone; the monitor deals with it
                pass
