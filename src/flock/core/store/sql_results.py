"""Buffered statement results for the SQL store's direct driver paths (sqlite3, asyncpg).

Both paths run the store's statements on the driver itself, not through SQLAlchemy's
execution; `FastResult` gives the rows back with the accessors of SQLAlchemy's `Result`
that the store uses (attribute rows, mappings, scalars, tuples), so the store's code does
not change with the path.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import exc as sa_exc

_row_types: dict[tuple[str, ...], Any] = {}
_namedtuple: Any = namedtuple  # row types named at run time (the columns a statement returns)


def row_type(keys: tuple[str, ...]) -> Any:
    """A maker of rows with these columns as attributes (one type per column list)."""
    made = _row_types.get(keys)
    if made is None:
        made = _namedtuple("Row", keys, rename=True)._make
        _row_types[keys] = made
    return made


class Rows:
    """Scalars, tuples or mappings of a `FastResult` (what the store calls on them)."""

    __slots__ = ("_items",)

    def __init__(self, items: list[Any]) -> None:
        self._items = items

    def all(self) -> list[Any]:
        return self._items

    def first(self) -> Any:
        return self._items[0] if self._items else None

    def one(self) -> Any:
        if len(self._items) != 1:
            raise sa_exc.NoResultFound if not self._items else sa_exc.MultipleResultsFound
        return self._items[0]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)


class FastResult:
    """A statement's rows as the driver gave them (tuples), and its `rowcount`."""

    __slots__ = ("_make", "keys", "rowcount", "rows")

    def __init__(self, rowcount: int, keys: Sequence[str], make: Any, rows: list[Any]) -> None:
        self.rowcount = rowcount
        self.keys = keys
        self._make = make
        self.rows = rows

    @classmethod
    def of(cls, rowcount: int, keys: tuple[str, ...], rows: list[Any]) -> FastResult:
        """Rows with these columns (none: a statement that returned no rows)."""
        return cls(rowcount, keys, row_type(keys) if keys else tuple, rows)

    @classmethod
    def empty(cls, rowcount: int = 0) -> FastResult:
        return cls(rowcount, (), tuple, [])

    @classmethod
    def merged(cls, results: Sequence[FastResult]) -> FastResult:
        """The rows of several results of one statement, as one result."""
        found = [r for r in results if r.rowcount > 0]
        if not found:
            return cls.empty()
        rows = [row for r in found for row in r.rows]
        return cls.of(len(rows), tuple(found[0].keys), rows)

    def all(self) -> list[Any]:
        return [self._make(row) for row in self.rows]

    def first(self) -> Any:
        return self._make(self.rows[0]) if self.rows else None

    def one(self) -> Any:
        return Rows(self.all()).one()

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def scalar_one(self) -> Any:
        return Rows(self.rows).one()[0]

    def scalars(self) -> Rows:
        return Rows([row[0] for row in self.rows])

    def tuples(self) -> Rows:
        return Rows(list(self.rows))

    def mappings(self) -> Rows:
        keys = self.keys
        return Rows([dict(zip(keys, row, strict=True)) for row in self.rows])

    def __iter__(self) -> Iterator[Any]:
        return iter(self.all())


__all__ = ["FastResult", "Rows", "row_type"]
