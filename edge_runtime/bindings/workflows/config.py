"""What Workflows reads from a Worker's code: durations ("10 seconds", milliseconds), a step's retry
and timeout config, timestamps, and the JSON form step results and outputs are persisted in."""

from __future__ import annotations

import builtins
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edgewise_sdk.workers import JsDict
from edgewise_sdk.workers.workflows import NonRetryableError

SECONDS_PER_UNIT = {"millisecond": 0.001, "second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0,
                    "week": 604800.0, "month": 2592000.0, "year": 31536000.0}
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$")
BACKOFFS = ("constant", "linear", "exponential")
DATETIME_TAG = "$datetime"  # a datetime in persisted JSON: {"$datetime": ISO 8601}


def duration_s(value: Any, what: str) -> float:
    """Seconds in a Workflows duration: a number of milliseconds, or a string such as "10 seconds"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{what}: {value!r} is not a duration (milliseconds must be 0 or more)")
        return value / 1000.0
    match = DURATION.match(value) if isinstance(value, str) else None
    unit = match.group(2).lower() if match else ""
    if unit not in SECONDS_PER_UNIT and unit.endswith("s"):
        unit = unit[:-1]
    if match is None or unit not in SECONDS_PER_UNIT:
        raise ValueError(f'{what}: {value!r} is not a duration; give milliseconds (a number) or a string like '
                         f'"10 seconds" (units: {", ".join(SECONDS_PER_UNIT)})')
    return float(match.group(1)) * SECONDS_PER_UNIT[unit]


def epoch_s(timestamp: Any, what: str) -> float:
    """Seconds since the epoch of a ``sleep_until`` timestamp: a datetime (naive: local time), an ISO 8601
    string, or seconds since the epoch."""
    if isinstance(timestamp, datetime):
        return timestamp.timestamp()
    if isinstance(timestamp, (int, float)) and not isinstance(timestamp, bool) and math.isfinite(timestamp):
        return float(timestamp)
    if isinstance(timestamp, str):
        try:
            return datetime.fromisoformat(timestamp.strip()).timestamp()
        except ValueError:
            pass
    raise ValueError(f"{what}: {timestamp!r} is not a time; give a datetime, an ISO 8601 string "
                     "(\"2026-12-24T09:00:00Z\") or seconds since the epoch")


@dataclass(frozen=True)
class StepPolicy:
    """A step's retries and timeout (Cloudflare's WorkflowStepConfig), defaults as Cloudflare documents."""

    limit: int = 5  # retries after the first attempt
    delay_s: float = 10.0
    backoff: str = "exponential"
    timeout_s: float = 600.0  # each attempt's
    config: Mapping[str, Any] | None = None  # as given, for ctx["config"]

    @classmethod
    def from_config(cls, config: Any, what: str) -> StepPolicy:
        if config is None:
            return cls()
        if not isinstance(config, Mapping):
            raise TypeError(f"{what}: config must be a dict like {{\"retries\": {{\"limit\": 3, \"delay\": "
                            f"\"5 seconds\"}}, \"timeout\": \"1 minute\"}}, got {type(config).__name__}")
        unknown = sorted(set(config) - {"retries", "timeout"})
        if unknown:
            raise TypeError(f"{what}: config has unknown key(s) {', '.join(map(repr, unknown))}; "
                            "it takes \"retries\" and \"timeout\"")
        policy = cls(config=config)
        if "timeout" in config:
            policy = cls(policy.limit, policy.delay_s, policy.backoff, duration_s(config["timeout"], f"{what}: timeout"),
                         config)
        retries = config.get("retries")
        return policy if retries is None else policy._with_retries(retries, what)

    def _with_retries(self, retries: Any, what: str) -> StepPolicy:
        if not isinstance(retries, Mapping) or "limit" not in retries or "delay" not in retries:
            raise TypeError(f"{what}: retries must be a dict with \"limit\" and \"delay\" (and \"backoff\": "
                            f"{' | '.join(BACKOFFS)}), got {retries!r}")
        limit = retries["limit"]
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0 or limit != int(limit):
            raise ValueError(f"{what}: retries.limit must be a whole number of retries (0 or more), got {limit!r}")
        backoff = retries.get("backoff", "constant")
        if backoff not in BACKOFFS:
            raise ValueError(f"{what}: retries.backoff must be one of {', '.join(BACKOFFS)}, got {backoff!r}")
        return StepPolicy(int(limit), duration_s(retries["delay"], f"{what}: retries.delay"), backoff,
                          self.timeout_s, self.config)

    def retry_delay_s(self, failures: int) -> float:
        """The wait before the next attempt after `failures` failed ones."""
        if self.backoff == "linear":
            return self.delay_s * failures
        if self.backoff == "exponential":
            return self.delay_s * 2 ** (failures - 1)
        return self.delay_s

    def as_context(self) -> dict[str, Any]:
        return {"retries": {"limit": self.limit, "delay": self.delay_s * 1000, "backoff": self.backoff},
                "timeout": self.timeout_s * 1000}


class NotPersistableError(TypeError):
    """A step result or output that is not JSON (retrying cannot help)."""

    name = "TypeError"


def encode(value: Any, what: str) -> str:
    """JSON text of a value Workflows persists; NotPersistableError naming `what` if it cannot be."""
    try:
        return json.dumps(value, default=_tagged, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise NotPersistableError(f"{what} cannot be persisted: {error}. Workflows keeps step results and outputs as "
                        "JSON: return dicts, lists, str, numbers, bools, None or datetimes") from None


def decode(text: str) -> Any:
    """The value persisted as `text`: dicts come back as JsDicts, datetimes as datetimes."""
    return json.loads(text, object_hook=_untagged)


def _tagged(value: Any) -> Any:
    if isinstance(value, datetime):
        return {DATETIME_TAG: value.isoformat()}
    raise TypeError(f"a {type(value).__name__} is not JSON")


def _untagged(found: dict[str, Any]) -> Any:
    if len(found) == 1 and isinstance(found.get(DATETIME_TAG), str):
        return datetime.fromisoformat(found[DATETIME_TAG])
    return JsDict(found)


class WorkflowStepError(Exception):
    """A failed step's error, as the step reports it (an error type the SDK cannot rebuild by name)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name, self.message = name, message


def error_record(error: BaseException) -> dict[str, str]:
    """{name, message}: how Workflows reports an error (``status()["error"]``, a failed step)."""
    named = isinstance(error, (WorkflowStepError, NonRetryableError, NotPersistableError))
    name = error.name if named else type(error).__name__  # type: ignore[attr-defined]
    single = len(error.args) == 1 and isinstance(error.args[0], str)
    return {"name": name, "message": error.args[0] if single else str(error)}  # KeyError's str() quotes it


def rebuild_error(record: Mapping[str, str]) -> Exception:
    """The exception a failed step raises in ``run()``, the same on every replay: built-in errors
    (ValueError, TypeError ...) and NonRetryableError keep their type, others become WorkflowStepError."""
    name, message = record["name"], record["message"]
    if name == "NonRetryableError":
        return NonRetryableError(message)
    builtin = getattr(builtins, name, None)
    if isinstance(builtin, type) and issubclass(builtin, Exception) and not issubclass(builtin, UnicodeError):
        try:
            return builtin(message)
        except TypeError:  # one that takes other arguments (ExceptionGroup)
            pass
    return WorkflowStepError(name, message)
