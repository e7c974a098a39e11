"""Queues: producers send into one SQLite store for the edge; the broker delivers batches to consumers.

``producer.py`` is ``env.<QUEUE>`` (``send``, ``sendBatch``); ``bodies.py`` the content types and
limits; ``store.py`` the messages on disk; ``broker.py`` the delivery loops; ``consumer.py`` the
consumer settings and the ``queue`` handler call; ``batch.py`` what the handler receives.
"""

from .producer import bind

__all__ = ["bind"]
