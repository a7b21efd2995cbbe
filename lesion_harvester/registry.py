"""A registry: things of one kind named by a string, filled by explicit ``register`` lines.

The project's choices by name (the detectors of ``train-lpg --detector`` and Table III, the LPC's
variants) are each one registry; code asks the registry for the entry of a name instead of
comparing the name itself, so that adding an entry is one new class and one registration line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from lesion_harvester.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind by name, in the order registered. ``kind`` names them in errors."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` as ``name``; a name registered twice is a bug, not a replacement."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered already")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry of ``name``, or a ConfigError naming the known ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self._entries)}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    @contextmanager
    def registered(self, name: str, entry: T) -> Iterator[T]:
        """``entry`` registered as ``name`` while the block runs (tests, plug-ins tried out)."""
        self.register(name, entry)
        try:
            yield entry
        finally:
            del self._entries[name]
