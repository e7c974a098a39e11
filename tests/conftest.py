"""The tests import `workers`, `js`, `pyodide` and `asgi` as Workers do: through the runtime's aliases."""

from edgewise_sdk import install_aliases

install_aliases()
