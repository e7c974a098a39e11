"""Durable Objects: one live instance per id across the edge's PoPs, with its own SQLite storage.

``namespace.py`` is what ``env.<NAME>`` holds (ids, stubs); ``directory.py`` keeps the live instances,
delivers events through their input gates (``state.py``) at the PoP each object lives at
(``placement.py``); ``storage.py`` and ``sql.py`` are ``ctx.storage``; ``alarms.py``,
``websockets.py`` (hibernation) and ``migrations.py`` complete the API; ``ids.py`` makes ids.
"""

from .namespace import bind

__all__ = ["bind"]
