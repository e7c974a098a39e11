"""Workers AI's server-sent events, read from a byte stream that may split them anywhere."""

import json

DONE = "[DONE]"


class StreamError(Exception):
    """An error event in the stream: the model failed after it began to answer."""


class EventParser:
    """Feed it chunks of the stream; it hands back the data of each complete event: a dict, or DONE."""

    def __init__(self):
        self._buffer = b""

    def feed(self, chunk):
        if not isinstance(chunk, (bytes, bytearray)):
            chunk = chunk.to_bytes()  # on Cloudflare a chunk is a Uint8Array proxy
        # joined first, so a "\r\n" split between two chunks is still seen
        self._buffer = (self._buffer + chunk).replace(b"\r\n", b"\n")
        *events, self._buffer = self._buffer.split(b"\n\n")
        return [data for data in map(_data, events) if data is not None]


def _data(event):
    """An event's data lines joined (the SSE rule), as DONE or parsed JSON; None for an event without data."""
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    text = b"\n".join(lines).decode("utf-8")
    return DONE if text.strip() == DONE else json.loads(text)


def error_text(data):
    """The message of an error event's payload: "<code>: <message>" when it has a code."""
    error = data["error"]
    if isinstance(error, dict):
        return f"{error['code']}: {error.get('message')}" if error.get("code") else str(error.get("message"))
    return str(error)
