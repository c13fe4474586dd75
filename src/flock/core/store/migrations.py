"""Versioned DDL for the SQL stores: a version table, and ordered steps to reach the latest.

Each SQL store describes its tables with a `SchemaDefinition`: how to create them at the
latest version in an empty database, the ordered `Step`s that bring an older database up
to it one version at a time, and which version a database written before the version table
existed is at. `prepare_schema` is the one DDL routine both stores run (on first use, from
`flock serve` at start-up, from `flock db upgrade`): it takes a lock so that concurrent
starters take turns (PostgreSQL: a transaction-scoped advisory lock; SQLite: `BEGIN
IMMEDIATE`), runs everything in one transaction, and refuses a database newer than the
code, or an older one when upgrading was not allowed. Adding a version is appending one
`Step` to a definition's list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Column, Connection, Integer, MetaData, Table, func, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateSchema

from flock.core.store.protocol import StoreUnavailableError
from flock.core.store.sql_backends import connection

StepRun = Callable[[Connection, "str | None"], None]


@dataclass(frozen=True, slots=True)
class Step:
    """Upgrades a database from `version - 1` to `version`."""

    version: int
    description: str
    run: StepRun


class SchemaVersionError(StoreUnavailableError):
    """The database cannot be used at its schema version by this Flock (it is newer than
    the code, or older and upgrading it was not allowed): retrying will not help until an
    operator acts, which the message says how."""


@dataclass(frozen=True, slots=True)
class SchemaState:
    """A database's schema version (None: empty), and the version the code has."""

    name: str
    version: int | None
    latest: int

    @property
    def current(self) -> bool:
        return self.version == self.latest


@dataclass(frozen=True, slots=True)
class Upgrade:
    """What `prepare_schema` did: `created` (empty database), `upgraded` or `current`."""

    name: str
    action: Literal["created", "upgraded", "current"]
    before: int | None
    after: int

    def describe(self) -> str:
        if self.action == "created":
            return f"{self.name}: tables created at schema version {self.after}"
        if self.action == "upgraded":
            return f"{self.name}: schema upgraded from version {self.before} to {self.after}"
        return f"{self.name}: schema version {self.after} (current)"


@dataclass(frozen=True)
class SchemaDefinition:
    """One store's versioned schema (see the module docstring).

    `create` makes the latest tables in an empty database; `steps` are ordered by version,
    the first one being version 1's baseline (its `run` is never called: a database has
    version 1 once it holds the first release's tables); `legacy_version` tells the version
    of a database without the version table (None when it holds none of the tables).
    """

    name: str
    version_table: str
    lock_id: int
    create: StepRun
    steps: Sequence[Step]
    legacy_version: Callable[[Connection, str | None], int | None]

    def __post_init__(self) -> None:
        versions = [step.version for step in self.steps]
        if versions != list(range(1, len(versions) + 1)):
            raise ValueError(f"{self.name}: steps must be versions 1, 2, 3, ... in order")

    @property
    def latest(self) -> int:
        return self.steps[-1].version

    def table(self, schema: str | None = None) -> Table:
        """The version table (in `schema`)."""
        return Table(
            self.version_table,
            MetaData(),
            Column("id", Integer, primary_key=True),
            Column("version", Integer, nullable=False),
            schema=schema,
        )

    def _stamp(self, conn: Connection, table: Table) -> None:
        table.create(conn, checkfirst=True)
        if conn.execute(select(table.c.version)).scalar() is None:
            conn.execute(table.insert().values(id=1, version=self.latest))
        else:
            conn.execute(table.update().values(version=self.latest))

    def version(self, conn: Connection, schema: str | None) -> int | None:
        """The database's version: its version table's, else `legacy_version`'s."""
        inspector = inspect(conn)
        if schema is not None and not inspector.has_schema(schema):
            return None
        if inspector.has_table(self.version_table, schema=schema):
            value = conn.execute(select(self.table(schema).c.version)).scalar()
            if value is not None:
                return int(value)
        return self.legacy_version(conn, schema)

    def upgrade(self, conn: Connection, schema: str | None, allowed: bool) -> Upgrade:
        """Bring the database to `latest` in the caller's transaction (see `prepare_schema`)."""
        before = self.version(conn, schema)
        if before is not None and before > self.latest:
            raise SchemaVersionError(
                f"the {self.name} has schema version {before}, newer than this Flock's "
                f"{self.latest}: upgrade Flock to use it"
            )
        table = self.table(schema)
        if before == self.latest:
            if allowed and not inspect(conn).has_table(table.name, schema=schema):
                self._stamp(conn, table)  # the first release's tables, at the latest version
            return Upgrade(self.name, "current", before, before)
        if before is not None and not allowed:
            raise SchemaVersionError(
                f"the {self.name} has schema version {before}, this Flock needs "
                f"{self.latest}: run `flock db upgrade` on it first (or serve with --migrate)"
            )
        if schema is not None and not inspect(conn).has_schema(schema):
            conn.execute(CreateSchema(schema, if_not_exists=True))
        if before is None:
            self.create(conn, schema)
        else:
            for step in self.steps[before:]:
                step.run(conn, schema)
        self._stamp(conn, table)
        return Upgrade(self.name, "created" if before is None else "upgraded", before, self.latest)


async def read_schema(
    engine: AsyncEngine,
    definition: SchemaDefinition,
    schema: str | None,
    *,
    timeout: float | None = None,
) -> SchemaState:
    """The database's schema version, changing nothing."""
    async with connection(engine, timeout=timeout) as conn:
        version = await conn.run_sync(definition.version, schema)
    return SchemaState(definition.name, version, definition.latest)


async def prepare_schema(
    engine: AsyncEngine,
    definition: SchemaDefinition,
    schema: str | None,
    *,
    upgrade: bool,
    timeout: float | None = None,
) -> Upgrade:
    """Create the tables of an empty database, check a current one, upgrade an older one
    when `upgrade` (else `SchemaVersionError`), all under a lock and in one transaction,
    within `timeout` seconds (None: no deadline, for an operator's `flock db upgrade`)."""
    async with connection(engine, timeout=timeout) as conn:
        if engine.dialect.name == "postgresql":
            # A real transaction even on an autocommit engine: PostgreSQL's DDL is
            # transactional, so a failed upgrade leaves the database as it was.
            conn = await conn.execution_options(isolation_level="READ COMMITTED")
            async with conn.begin():
                await conn.execute(select(func.pg_advisory_xact_lock(definition.lock_id)))
                return await conn.run_sync(definition.upgrade, schema, upgrade)
        # SQLite: WAL sticks to the file once set (readers then run beside the writer); the
        # DDL runs in one write-locked transaction, so a concurrent starter waits for it and
        # never sees a table without its indexes.
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql("PRAGMA journal_mode = WAL")
        await conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            outcome = await conn.run_sync(definition.upgrade, schema, upgrade)
        except BaseException:
            # An interrupted statement (a cancellation, a lost connection) invalidates the
            # connection: closing it discarded the transaction, and another statement on it
            # would raise in place of the original error.
            if not conn.invalidated:
                await conn.exec_driver_sql("ROLLBACK")
            raise
        await conn.exec_driver_sql("COMMIT")
        return outcome


def add_columns(table: str, columns: Sequence[tuple[str, str]]) -> StepRun:
    """A step adding `columns` ((name, DDL type and default)) to `table`, if missing."""

    def run(conn: Connection, schema: str | None) -> None:
        present = {c["name"] for c in inspect(conn).get_columns(table, schema=schema)}
        preparer = conn.dialect.identifier_preparer
        name = preparer.quote(table)
        if schema is not None:
            name = f"{preparer.quote_schema(schema)}.{name}"
        for column, ddl in columns:
            if column not in present:
                conn.exec_driver_sql(f"ALTER TABLE {name} ADD COLUMN {column} {ddl}")

    return run


def create_tables(metadata: MetaData, *names: str) -> StepRun:
    """A step creating the tables `names` of `metadata` (with their indexes), if missing."""

    def run(conn: Connection, schema: str | None) -> None:
        tables = [metadata.tables[name] for name in names]
        metadata.create_all(conn, tables=tables, checkfirst=True)

    return run


def in_order(*runs: StepRun) -> StepRun:
    """A step doing `runs` one after the other."""

    def run(conn: Connection, schema: str | None) -> None:
        for each in runs:
            each(conn, schema)

    return run


def baseline(conn: Connection, schema: str | None) -> None:
    """Version 1's step: never run (a database is at version 1 once it has its tables)."""


__all__ = [
    "SchemaDefinition",
    "SchemaState",
    "SchemaVersionError",
    "Step",
    "Upgrade",
    "add_columns",
    "baseline",
    "create_tables",
    "in_order",
    "prepare_schema",
    "read_schema",
]
