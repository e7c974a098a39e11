"""Models that ship inside the package, by the name requests use (``@cf/edgewise/...``) -> checkpoint folder.

Each folder is an ordinary Hugging Face checkpoint, loaded like any other (`LLM(builtin_model_path(name))`);
the script next to it that trained it can rebuild it.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).parent

BUILTIN_MODELS: dict[str, Path] = {
    "@cf/edgewise/tiny-shakespeare": _HERE / "tiny-shakespeare",
}


def builtin_model_path(name: str) -> Path:
    """The checkpoint folder of the built-in model `name`; KeyError if there is none by that name."""
    try:
        return BUILTIN_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise KeyError(f"no built-in model named {name!r}; built-in models: {known}") from None
