"""The engine's typed errors: each names what was wrong and what to do; the service maps them to HTTP."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class CheckpointError(EngineError):
    """The folder is not a usable Hugging Face checkpoint (missing or malformed files, missing weights)."""


class UnsupportedArchitectureError(CheckpointError):
    """config.json names an architecture the engine has no model for."""


class InvalidRequestError(EngineError):
    """A request the engine cannot run as given (bad sampling parameters, empty prompt)."""


class PromptTooLongError(InvalidRequestError):
    """The prompt (plus at least one new token) does not fit the model's context or the KV cache."""


class RequestAbortedError(EngineError):
    """The request was aborted before it finished."""


class InstanceLostError(EngineError):
    """A rank of a sharded instance died or hung: its requests ended, and the instance is restarting."""


class InstanceFailedError(InstanceLostError):
    """A sharded instance was lost and every restart is used up: the model stays down until the
    backend itself is restarted, so retrying cannot help."""


class CompressedWeightsError(CheckpointError):
    """A compressed-weights file (docs/weights-format.md) that cannot be read as written."""


class WeightsChecksumError(CompressedWeightsError):
    """A tensor's stored bytes or decoded values do not match the checksum written beside them."""


class WeightsFormatVersionError(CompressedWeightsError):
    """The file was written in a version of the compressed-weights format this code does not read."""


class UnsupportedWeightsDtypeError(CompressedWeightsError):
    """``weights compress`` was asked for a dtype the format has no fixed-rate code for."""
