"""``pyodide`` on CPython: the ``ffi`` and ``http`` helpers Python Workers import, without a JS engine."""

from . import ffi, http

__all__ = ["ffi", "http"]
