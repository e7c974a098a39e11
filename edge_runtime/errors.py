"""Cloudflare-style error responses of the edge (1101 exception, 1102 limits, 413 ...), in one place."""

from __future__ import annotations

import html
from dataclasses import dataclass


@dataclass
class EdgeError(Exception):
    """An error the edge answers itself; ``code`` is Cloudflare's error number where one exists."""

    status: int
    code: int | None
    title: str
    detail: str = ""
    outcome: str = "exception"  # what the tail event calls it

    def __str__(self) -> str:
        prefix = f"Error {self.code}: " if self.code else ""
        return f"{prefix}{self.title}" + (f"\n{self.detail}" if self.detail else "")


def worker_threw(detail: str) -> EdgeError:
    return EdgeError(500, 1101, "Worker threw exception", detail)


def worker_exceeded_limits(detail: str) -> EdgeError:
    return EdgeError(503, 1102, "Worker exceeded resource limits", detail)


def worker_exceeded_memory(detail: str) -> EdgeError:
    return EdgeError(503, 1102, "Worker exceeded resource limits", detail, outcome="exceededMemory")


def payload_too_large(limit_bytes: int) -> EdgeError:
    return EdgeError(
        413, None, "Payload Too Large",
        f"The request body is larger than {limit_bytes} bytes (raise [edgewise.limits] max_request_body_bytes).",
    )


def client_disconnected() -> EdgeError:
    # 499 is nginx's "client closed request"; nobody receives it, but logs and tail show it.
    return EdgeError(499, None, "Client Closed Request", "The client disconnected before the Worker answered.")


def bad_request(detail: str) -> EdgeError:
    return EdgeError(400, None, "Bad Request", detail)


def no_healthy_pop(detail: str) -> EdgeError:
    return EdgeError(503, None, "No healthy PoP", detail)


def render(error: EdgeError, ray_id: str | None, wants_html: bool) -> tuple[bytes, str]:
    """Body and content-type: an HTML page for browsers, text for everything else (curl, SDKs)."""
    ray = f"Ray ID: {ray_id}" if ray_id else ""
    if not wants_html:
        head = f"error code: {error.code}" if error.code else f"{error.status} {error.title}"
        text = "\n\n".join(part for part in (head, error.title if error.code else "", error.detail, ray) if part)
        return (text + "\n").encode(), "text/plain;charset=UTF-8"
    title = html.escape(str(error).splitlines()[0])
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}"
        "pre{background:#f6f6f6;padding:1rem;overflow:auto}small{color:#666}</style></head>"
        f"<body><h1>{title}</h1><pre>{html.escape(error.detail)}</pre><small>{html.escape(ray)}"
        " &middot; edgewise dev</small></body></html>"
    )
    return page.encode(), "text/html;charset=UTF-8"
