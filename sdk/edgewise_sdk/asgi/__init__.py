"""``import asgi``: the top-level alias of ``workers.asgi`` that Python Workers use (as in Cloudflare's SDK)."""

import sys

from edgewise_sdk.workers import asgi as _workers_asgi

# One module under both names, so `asgi.env`, `asgi.fetch` and `workers.asgi.*` are the same objects.
sys.modules[__name__] = _workers_asgi
