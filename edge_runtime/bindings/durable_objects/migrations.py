"""A Worker's Durable Object ``migrations``, replayed in order: which classes exist and whose data each keeps.

``new_classes`` / ``new_sqlite_classes`` create a class, ``renamed_classes`` moves a class's data (and
its ids) to the new name, ``deleted_classes`` removes the class and its data. The result answers, for a
class a binding names, where its objects' data lives (``storage_name``) or why it cannot be bound.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...config import ConfigError

log = logging.getLogger("edgewise.durable_objects")


class DurableObjectConfigError(ConfigError):
    """A Durable Object binding or migration that cannot run; the message names the class and the tag."""

    def __init__(self, message: str) -> None:
        super().__init__(None, None, message)


@dataclass(frozen=True)
class ObjectClass:
    """One Durable Object namespace: a class of one Worker, and the class name its data is kept under."""

    script_name: str
    class_name: str
    storage_name: str  # the first name of a renamed class: its data and ids stay with it
    sqlite_backed: bool = True  # new_sqlite_classes (and undeclared classes); False: new_classes' limits

    @property
    def namespace_key(self) -> str:
        """Folder name under the state's ``do`` folder, as wrangler lays it out: ``<worker>-<Class>``."""
        return f"{self.script_name}-{self.storage_name}"


@dataclass
class ClassMigrations:
    """The classes a Worker's migrations leave: live ones (with the tag that made them) and deleted ones."""

    live: dict[str, tuple[str, str, bool]] = field(default_factory=dict)  # class -> (storage name, tag, sqlite)
    deleted: dict[str, str] = field(default_factory=dict)  # class -> tag of the deletion
    deleted_storage: list[str] = field(default_factory=list)  # storage names whose data was deleted

    @classmethod
    def replay(cls, migrations: Sequence[Mapping[str, Any]]) -> ClassMigrations:
        state = cls()
        for index, migration in enumerate(migrations):
            tag = migration.get("tag")
            if not isinstance(tag, str) or not tag:
                raise ConfigError(None, f"migrations[{index}].tag", f"must be a non-empty string, got {tag!r}")
            state._apply(migration, tag, index)
        return state

    def _apply(self, migration: Mapping[str, Any], tag: str, index: int) -> None:
        for key in ("new_classes", "new_sqlite_classes"):
            for name in _names(migration, key, index):
                if name in self.live:
                    raise DurableObjectConfigError(f'migrations tag "{tag}" adds class "{name}", but tag '
                                                   f'"{self.live[name][1]}" already added it')
                self.live[name] = (name, tag, key == "new_sqlite_classes")
                self.deleted.pop(name, None)
                if name in self.deleted_storage:  # added again: a new namespace under the old name
                    self.deleted_storage.remove(name)
        for index_in, rename in enumerate(_list(migration, "renamed_classes", index)):
            old, new = _rename(rename, f"migrations[{index}].renamed_classes[{index_in}]")
            if old not in self.live:
                raise DurableObjectConfigError(f'migrations tag "{tag}" renames class "{old}" to "{new}", but no '
                                               f'earlier migration adds "{old}"')
            storage_name, _, sqlite_backed = self.live.pop(old)
            self.live[new] = (storage_name, tag, sqlite_backed)
        for name in _names(migration, "deleted_classes", index):
            if name not in self.live:
                raise DurableObjectConfigError(f'migrations tag "{tag}" deletes class "{name}", but no earlier '
                                               f'migration adds it')
            self.deleted_storage.append(self.live.pop(name)[0])
            self.deleted[name] = tag

    def object_class(self, script_name: str, class_name: str) -> ObjectClass:
        """The bound class's namespace; a deleted class is an error, an undeclared one a warning."""
        if class_name in self.deleted:
            raise DurableObjectConfigError(
                f'A Durable Object binding names class "{class_name}" of Worker "{script_name}", but migrations '
                f'tag "{self.deleted[class_name]}" deleted it (and its data): bind another class or drop the binding')
        if class_name not in self.live:
            log.warning('Durable Object class "%s" of Worker "%s" is in no migration: add it to a migration\'s '
                        'new_sqlite_classes (wrangler requires one to deploy); running it anyway', class_name,
                        script_name)
            return ObjectClass(script_name, class_name, class_name)
        storage_name, _, sqlite_backed = self.live[class_name]
        return ObjectClass(script_name, class_name, storage_name, sqlite_backed)


def _list(migration: Mapping[str, Any], key: str, index: int) -> Sequence[Any]:
    value = migration.get(key, [])
    if not isinstance(value, (list, tuple)):
        raise ConfigError(None, f"migrations[{index}].{key}", f"must be an array, got {value!r}")
    return value


def _names(migration: Mapping[str, Any], key: str, index: int) -> list[str]:
    names = list(_list(migration, key, index))
    for position, name in enumerate(names):
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(None, f"migrations[{index}].{key}[{position}]",
                              f"must be a class name like \"Counter\", got {name!r}")
    return names


def _rename(rename: Any, key: str) -> tuple[str, str]:
    if not isinstance(rename, Mapping) or not all(isinstance(rename.get(k), str) for k in ("from", "to")):
        raise ConfigError(None, key, f'must be a table {{from = "OldClass", to = "NewClass"}}, got {rename!r}')
    return rename["from"], rename["to"]
