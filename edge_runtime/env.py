"""The ``env`` a Worker sees: vars, secrets and bindings, readable as attributes or keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgewise_sdk.workers import JsDict, to_jsdict


class Env(JsDict):
    """``self.env.MESSAGE`` and ``self.env["MESSAGE"]``; a missing name is an AttributeError naming the config."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"env has no binding {name!r}: add it under [vars], to .dev.vars, or as a binding in wrangler.toml"
            ) from None


def build_env(vars: Mapping[str, Any], secrets: Mapping[str, str], bindings: Mapping[str, Any]) -> Env:
    """Vars (JSON values become attribute-capable), then secrets, then bindings; later ones win."""
    env = Env({name: to_jsdict(value) for name, value in vars.items()})
    env.update(secrets)
    env.update(bindings)
    return env
