"""A base for typed records that write back exactly the JSON mapping they were read from.

A subclass is a frozen dataclass whose fields are the keys it knows, each with a default (what a reader sees when the
key is absent). ``from_json`` keeps the keys as read, in their order, and the keys it does not know; ``to_json``
writes the same keys in the same order, so a file read and written back is byte-identical.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

RecordT = TypeVar("RecordT", bound="JsonRecord")


def _frozen(value: Any) -> Any:
    """JSON lists as (nested) tuples, so a record's fields are immutable; everything else as it is."""
    return tuple(_frozen(item) for item in value) if isinstance(value, list) else value


def _plain(value: Any) -> Any:
    """Tuples back to JSON lists, at any depth."""
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class JsonRecord:
    """A record read from a JSON mapping: one field per known key, ``extra`` for the others.

    ``key_order`` is the keys as read (None when the record was built in code: then every known key that is not None
    is written, in field order). A known key set in code but absent when read is written after the keys read.
    """

    extra: dict[str, Any] = dataclasses.field(default_factory=dict, kw_only=True)
    key_order: tuple[str, ...] | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)

    @classmethod
    def _known(cls) -> list[str]:
        return [field.name for field in dataclasses.fields(cls) if field.name not in ("extra", "key_order")]

    @classmethod
    def from_json(cls: type[RecordT], data: Mapping[str, Any]) -> RecordT:
        known = cls._known()
        values = {key: _frozen(value) for key, value in data.items() if key in known}
        extra = {key: value for key, value in data.items() if key not in known}
        return cls(**values, extra=extra, key_order=tuple(data))

    def to_json(self) -> dict[str, Any]:
        """The mapping as read (same keys, same order), with this record's current values."""
        values = {key: _plain(getattr(self, key)) for key in self._known()}
        if self.key_order is None:
            return {**{key: value for key, value in values.items() if value is not None}, **self.extra}
        defaults = type(self)()
        keys = [*self.key_order]
        keys += [key for key in values if key not in keys and getattr(self, key) != getattr(defaults, key)]
        keys += [key for key in self.extra if key not in keys]
        return {key: values[key] if key in values else self.extra[key] for key in keys}

    def replace(self: RecordT, **changes: Any) -> RecordT:
        return dataclasses.replace(self, **changes)
