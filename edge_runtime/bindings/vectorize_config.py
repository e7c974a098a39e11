"""A Vectorize index's limits, errors and config: Cloudflare's limits and option names, the errors a
call raises, and ``config.json`` (dimensions and metric), written when an index is created.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import StateDir

# Cloudflare's limits (developers.cloudflare.com/vectorize/platform/limits)
MAX_DIMENSIONS = 1536
MAX_ID_BYTES = 64
MAX_NAMESPACE_BYTES = 64
MAX_INDEX_NAME_BYTES = 64
MAX_METADATA_BYTES = 10 * 1024
MAX_TOP_K = 100  # without values and with metadata "none" or "indexed"
MAX_TOP_K_WITH_DATA = 50  # with returnValues or returnMetadata="all"
MAX_BATCH = 1000  # vectors per insert/upsert from a Worker
MAX_FILTER_BYTES = 2048
MAX_FILTER_KEY_CHARS = 512
DEFAULT_TOP_K = 5

METRICS = {"cosine": "cos", "euclidean": "l2sq", "dot-product": "ip"}  # Cloudflare's name -> usearch's
METADATA_LEVELS = ("none", "indexed", "all")
QUERY_OPTIONS = ("topK", "returnValues", "returnMetadata", "filter", "namespace")
VECTOR_KEYS = ("id", "values", "metadata", "namespace")
CONFIG_FILE = "config.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class VectorizeError(Exception):
    """A call Vectorize refuses; the message starts as workerd's does: ``VECTOR_QUERY_ERROR: ...``."""


class VectorizeTypeError(VectorizeError, TypeError):
    """An argument of the wrong Python type (a tuple where a list goes, an unknown option)."""


class VectorizeIndexNotFoundError(VectorizeError):
    """The binding names an index that was never created and the config gives no dimensions."""


def vectorize_error(operation: str, detail: str, kind: type[VectorizeError] = VectorizeError) -> VectorizeError:
    return kind(f"VECTOR_{operation}_ERROR: {detail}")


@dataclass(frozen=True)
class IndexConfig:
    """What an index is created with; kept as ``config.json`` in its folder."""

    name: str
    dimensions: int
    metric: str
    id: str = ""
    created_on: str = ""

    def __post_init__(self) -> None:
        check_index_name(self.name)
        if type(self.dimensions) is not int or not 1 <= self.dimensions <= MAX_DIMENSIONS:
            raise ValueError(f"dimensions must be a whole number from 1 to {MAX_DIMENSIONS}, got {self.dimensions!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")


def check_index_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name.encode()) > MAX_INDEX_NAME_BYTES:
        raise ValueError(f"an index name is letters, digits, '-', '_' or '.', starting with a letter or digit, "
                         f"at most {MAX_INDEX_NAME_BYTES} bytes (it names a folder), got {name!r}")
    return name


def _state_root(state: StateDir | Path) -> Path:
    return state.root if isinstance(state, StateDir) else Path(state)


def index_folder(state: StateDir | Path, name: str) -> Path:
    """``<state>/vectorize/<name>``; ``state`` is a StateDir or its root (``.wrangler/state/v3``)."""
    return _state_root(state) / "vectorize" / check_index_name(name)


def read_index_config(folder: Path) -> IndexConfig | None:
    try:
        return IndexConfig(**json.loads((folder / CONFIG_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as error:
        raise VectorizeError(f"VECTOR_INDEX_GET_ERROR: {folder / CONFIG_FILE} is not an index config ({error}): "
                             f"delete the folder and create the index again") from error


def create_index(state: StateDir | Path, name: str, dimensions: int, metric: str = "cosine") -> IndexConfig:
    """Create an empty index, as ``wrangler vectorize create NAME --dimensions N --metric M`` does.

    ``state`` is a StateDir or its root folder. Raises ValueError for bad settings or an existing index.
    """
    config = IndexConfig(name, dimensions, metric, str(uuid.uuid4()), iso_time(time.time_ns() // 1_000_000))
    folder = index_folder(state, name)
    if read_index_config(folder) is not None:
        raise ValueError(f"index {name!r} already exists in {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / CONFIG_FILE, json.dumps(asdict(config), indent=2).encode())
    return config


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def iso_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
