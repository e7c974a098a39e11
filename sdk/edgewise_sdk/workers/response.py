"""``Response``: what a Worker returns and what ``fetch`` resolves to, with Cloudflare's Python API."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from .body import Body, BodyInit, BodySource, encode_body
from .headers import Headers, HeadersInit

NULL_BODY_STATUSES = frozenset({101, 204, 205, 304})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def _status(status: int | HTTPStatus | None, web_socket: Any) -> int:
    code = int(status) if status else 200
    if code == 101 and web_socket is not None:
        return code
    if not 200 <= code <= 599:
        raise ValueError(f"Responses may only be constructed with status codes in the range 200 to 599, inclusive ({code})")
    return code


class _ClassOrInstance:
    """``Response.json(data)`` builds a response; ``await response.json()`` reads one (as in the SDK)."""

    def __init__(self, factory: str, reader: Any) -> None:
        self._factory, self._reader = factory, reader

    def __get__(self, instance: Any, owner: type) -> Any:
        if instance is None:
            return getattr(owner, self._factory)
        return self._reader.__get__(instance, owner)


class Response(Body):
    """``Response(body=None, status=None, status_text="", headers=None, web_socket=None)``."""

    def __init__(
        self,
        body: BodyInit | Response = None,
        status: int | HTTPStatus | None = None,
        status_text: str = "",
        headers: HeadersInit = None,
        web_socket: Any = None,
    ) -> None:
        if isinstance(body, Response):
            if status is not None or status_text or headers is not None or web_socket is not None:
                raise ValueError("Response(body=<Response>) takes no other options; use replace_body() to keep status and headers")
            self._adopt(body)
            return
        self.status = 200 if status is None else _status(status, web_socket)
        self.status_text = status_text or _reason(self.status)
        self.headers = Headers(headers)
        self.web_socket = web_socket
        self.url, self.redirected, self.type = "", False, "default"
        self._body, self._body_used = encode_body(body, self.headers, "Response"), False
        if self._body is not None and self.status in NULL_BODY_STATUSES:
            raise TypeError(f"Response with null body status ({self.status}) cannot have body")

    def _adopt(self, other: Response) -> None:
        self.__dict__.update(other.__dict__)
        self.headers = other.headers.copy()
        other._body_used = other._body is not None

    @classmethod
    def _from_parts(cls, status: int, headers: Headers, body: BodySource, url: str = "", redirected: bool = False) -> Response:
        """Build without validation: ``fetch`` uses it for whatever status an upstream returned."""
        response = cls.__new__(cls)
        response.status, response.status_text, response.headers = status, _reason(status), headers
        response._body, response._body_used, response.web_socket = body, False, None
        response.url, response.redirected, response.type = url, redirected, "basic"
        return response

    @classmethod
    def new(cls, body: BodyInit = None, init: dict[str, Any] | None = None, **init_kw: Any) -> Response:
        """JS spelling ``Response.new(body, {"status": 200})``; Pyodide also passes the init as keywords."""
        init = {**(init or {}), **init_kw}
        return cls(body, status=init.get("status"), status_text=init.get("statusText", ""),
                   headers=init.get("headers"), web_socket=init.get("webSocket"))

    @staticmethod
    def _json_factory(data: Any, status: int | HTTPStatus = 200, status_text: str = "", headers: HeadersInit = None) -> Response:
        # A bytes body gets no default content-type, so a caller's own one is simply kept.
        response = Response(json.dumps(data).encode(), status=status, status_text=status_text, headers=headers)
        if "content-type" not in response.headers:
            response.headers.put_lower("content-type", "application/json")
        return response

    json = _ClassOrInstance("_json_factory", Body.json)  # type: ignore[assignment]
    from_json = _json_factory

    @staticmethod
    def redirect(url: str, status: int | HTTPStatus = 302) -> Response:
        if not url:
            raise ValueError("Response.redirect() needs a non-empty URL")
        if int(status) not in REDIRECT_STATUSES:
            raise ValueError(f"Invalid redirect status {int(status)}: use one of {sorted(REDIRECT_STATUSES)}")
        return Response(None, status=status, headers={"location": url})

    @property
    def ok(self) -> bool:
        return 200 <= self.status <= 299

    @property
    def statusText(self) -> str:  # noqa: N802 - JS name
        return self.status_text

    @property
    def webSocket(self) -> Any:  # noqa: N802 - JS name
        return self.web_socket

    @property
    def js_object(self) -> Response:
        return self

    js_response = js_object

    def raise_for_status(self) -> None:
        if self.status >= 400:
            kind = "Client" if self.status < 500 else "Server"
            raise OSError(f"{self.status} {kind} Error: {self.status_text} for url: {self.url}")

    def replace_body(self, body: BodyInit) -> Response:
        return Response(body, status=self.status, status_text=self.status_text, headers=self.headers.copy())

    def clone(self) -> Response:
        if self._body_used:
            raise OSError("Body already used")
        if self._body is not None and not isinstance(self._body, bytes):
            raise OSError("Cannot clone a Response whose body is a stream; read it with bytes() first")
        clone = Response._from_parts(self.status, self.headers.copy(), self._body, self.url, self.redirected)
        clone.status_text = self.status_text
        return clone

    def __repr__(self) -> str:
        return f"Response(status={self.status}, content_type={self.headers.get('content-type')!r})"


FetchResponse = Response


_REASONS = {status.value: status.phrase for status in HTTPStatus}


def _reason(status: int) -> str:
    return _REASONS.get(status, "")
