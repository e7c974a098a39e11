"""Workflows: durable runs of a ``WorkflowEntrypoint``, replayed from their persisted steps.

``binding.py`` is ``env.<WF>`` (``create``, ``get``, instances); ``engine.py`` runs instances as turns
through ``Edge.invoke``; ``steps.py`` is the ``step`` API's durable side; ``store.py`` the SQLite
store; ``config.py`` durations, retries and encoding; ``definitions.py`` the workflows the configs declare.
"""

from .binding import bind

__all__ = ["bind"]
