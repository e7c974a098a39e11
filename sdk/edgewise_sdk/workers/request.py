"""``Request``: an incoming or outgoing HTTP request, with Cloudflare's Python Workers API."""

from __future__ import annotations

from http import HTTPMethod
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ._jsdict import JsDict, to_jsdict
from .body import Body, BodyInit, BodySource, encode_body
from .headers import Headers, HeadersInit

_NO_BODY_METHODS = (HTTPMethod.GET, HTTPMethod.HEAD)
_METHODS = {method.value: method for method in HTTPMethod}  # a dict lookup; Enum(value) is slow


def _normalise_url(url: str) -> str:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise TypeError(f"Invalid URL: {url!r} (a Request needs an absolute URL such as 'https://example.com/')")
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", parts.query, parts.fragment))


def _method(value: str | HTTPMethod) -> HTTPMethod:
    try:
        return HTTPMethod(str(value).upper())
    except ValueError:
        raise TypeError(f"Invalid HTTP method: {value!r}") from None


class Request(Body):
    """``Request(input, *, method, headers, body, redirect, cf)`` with ``input`` a URL or another Request."""

    def __init__(
        self,
        input: str | Request,
        *,
        method: str | HTTPMethod | None = None,
        headers: HeadersInit = None,
        body: BodyInit = None,
        redirect: str | None = None,
        cf: Any = None,
        fetcher: Any = None,
        **other: Any,
    ) -> None:
        if isinstance(input, Request):
            self._copy_from(input, headers is None, body is None)
        else:
            self.url = _normalise_url(str(input))
            self.method = HTTPMethod.GET
            self.headers = Headers()
            self._body, self._body_used = None, False
            self.redirect, self.cf = "follow", None
        if method is not None:
            self.method = _method(method)
        if headers is not None:
            self.headers = Headers(headers)
        if body is not None:
            if self.method in _NO_BODY_METHODS:
                raise TypeError(f"Request with {self.method} method cannot have a body.")
            self._body, self._body_used = encode_body(body, self.headers, "Request"), False
        if redirect is not None:
            self.redirect = redirect
        if cf is not None:
            self.cf = to_jsdict(dict(cf)) if isinstance(cf, dict) else cf
        self.fetcher = fetcher
        self.options = other

    def _copy_from(self, other: Request, keep_headers: bool, keep_body: bool) -> None:
        if keep_body and other._body is not None and other._body_used:
            raise TypeError("Cannot construct a Request with a Request object that has already been used.")
        self.url, self.method, self.redirect, self.cf = other.url, other.method, other.redirect, other.cf
        self.headers = other.headers.copy() if keep_headers else Headers()
        self._body, self._body_used = (other._body, False) if keep_body else (None, False)
        if keep_body and other._body is not None:
            other._body_used = True  # the stream moves to the new request, as in JS

    @classmethod
    def _incoming(cls, url: str, method: str, headers: Headers, body: BodySource,
                  make_cf: Callable[[], JsDict] | None) -> Request:
        """The runtime's constructor for a request arriving at a Worker: no validation, no copies.

        ``request.cf`` is built by ``make_cf`` on first access: most Workers never read it.
        """
        request = cls.__new__(cls)
        request.url, request.method, request.headers = url, _METHODS.get(method) or _method(method), headers
        request._body, request._body_used = body, False
        request._cf, request._make_cf = None, make_cf
        request.redirect, request.fetcher, request.options = "manual", None, {}
        return request

    @property
    def cf(self) -> Any:
        if self._make_cf is not None:
            self._cf, self._make_cf = self._make_cf(), None
        return self._cf

    @cf.setter
    def cf(self, value: Any) -> None:
        self._cf, self._make_cf = value, None

    @classmethod
    def new(cls, input: str | Request, init: dict[str, Any] | None = None, **init_kw: Any) -> Request:
        """JS spelling ``Request.new(url, {...})``; Pyodide also passes the init as keywords."""
        return cls(input, **{**(init or {}), **init_kw})

    @property
    def js_object(self) -> Request:
        # On Pyodide this is the JS Request; here the Python object plays both roles.
        return self

    @property
    def _js_request(self) -> JsRequestView:
        """Where workers-py keeps the JS Request; code written for Cloudflare reads ``request._js_request.cf``."""
        return JsRequestView(self)

    def clone(self) -> Request:
        if self._body_used:
            raise OSError("Body already used")
        if self._body is not None and not isinstance(self._body, bytes):
            raise OSError("Cannot clone a Request whose body is a stream; read it with bytes() first")
        clone = Request(self)
        self._body_used = False
        return clone

    def __repr__(self) -> str:
        return f"Request(method={str(self.method)!r}, url={self.url!r})"


class JsHeadersView:
    """A request's headers as Pyodide shows a JS ``Headers``: iterating gives ``[name, value]`` pairs."""

    def __init__(self, headers: Headers) -> None:
        self._headers = headers

    def get(self, name: str) -> str | None:
        return self._headers.get(name)

    def has(self, name: str) -> bool:
        return self._headers.has(name)

    def set(self, name: str, value: str) -> None:
        self._headers.set(name, value)

    def append(self, name: str, value: str) -> None:
        self._headers.append(name, value)

    def delete(self, name: str) -> None:
        self._headers.delete(name)

    def getSetCookie(self) -> list[str]:  # noqa: N802 - JS name
        return self._headers.getSetCookie()

    def entries(self) -> Iterator[list[str]]:
        return iter([[name, value] for name, value in self._headers.items()])

    __iter__ = entries

    def keys(self) -> Iterator[str]:
        return iter(list(self._headers))

    def values(self) -> Iterator[str]:
        return iter(list(self._headers.values()))

    def forEach(self, callback: Callable[..., Any]) -> None:  # noqa: N802 - JS name
        for name, value in list(self._headers.items()):
            callback(value, name)


class JsRequestView:
    """``request._js_request``: the JS Request surface (``url``, ``method``, ``headers``, ``cf``, the body
    readers) over the same request, so the body is still read once."""

    def __init__(self, request: Request) -> None:
        self._request = request

    url = property(lambda self: self._request.url)
    method = property(lambda self: str(self._request.method.value))
    headers = property(lambda self: JsHeadersView(self._request.headers))
    cf = property(lambda self: self._request.cf)
    redirect = property(lambda self: self._request.redirect)
    body = property(lambda self: self._request.body)
    bodyUsed = property(lambda self: self._request.body_used)  # noqa: N815 - JS name

    async def text(self) -> str:
        return await self._request.text()

    async def json(self) -> Any:
        return await self._request.json()

    async def arrayBuffer(self) -> bytes:  # noqa: N802 - JS name
        return await self._request.bytes()

    async def formData(self) -> Any:  # noqa: N802 - JS name
        return await self._request.form_data()

    async def blob(self) -> Any:
        return await self._request.blob()

    def clone(self) -> JsRequestView:
        return JsRequestView(self._request.clone())

    def __repr__(self) -> str:
        return f"JsRequest(method={self.method!r}, url={self.url!r})"
