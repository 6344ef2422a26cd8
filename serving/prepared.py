"""A request's store reads, compiled once for the store's database and run on the driver's
own cursor.

SQLAlchemy's work around each execution (an execution context, the parameters processed
one by one, a result object) took 58 us of a 71 us primary-key read on SQLite; a /rank makes
four such reads. A :class:`Prepared` statement keeps what that work finds out once (the SQL
text in the driver's parameter style, each parameter's and each column's conversion, as the
column types define them) and applies it itself: a read then costs the query and little more
(about 15 us). The same statements run through SQLAlchemy everywhere else; a test holds the
two to the same rows on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, Select
from sqlalchemy.engine import Dialect


class Prepared:
    """One SELECT without list parameters, compiled for one dialect."""

    def __init__(self, statement: Select[Any], dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        # the driver's order of the parameters where its style is positional
        self.order = tuple(compiled.positiontup or ()) if compiled.positional else None
        self.convert_in: dict[str, Callable[[Any], Any]] = {}
        self.given: dict[str, Any] = {}  # the statement's own values (its literals)
        for name, bind in compiled.binds.items():
            if bind.expanding:
                raise ValueError(f"{name}: a list parameter is rendered per execution")
            if not bind.required:
                self.given[name] = bind.effective_value
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                self.convert_in[name] = process
        self.dialect = dialect
        self.columns = [column.type.dialect_impl(dialect) for column in statement.selected_columns]
        self.row: Any = namedtuple(  # type: ignore[misc]
            "Row", [str(column.key) for column in statement.selected_columns])
        # each column's conversion, from the driver's type of it (its first answer says)
        self.convert_out: list[Callable[[Any], Any] | None] | None = None

    def rows(self, db: Connection, params: Mapping[str, Any]) -> list[Any]:
        """The statement's rows on ``db``'s driver connection (in its transaction)."""
        values = {name: self.convert_in[name](value) if name in self.convert_in else value
                  for name, value in {**self.given, **params}.items()}
        cursor = db.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self.sql, values if self.order is None
                           else tuple(values[name] for name in self.order))
            fetched = cursor.fetchall()
            convert = self.convert_out
            if convert is None:
                convert = self.convert_out = [
                    kind.result_processor(self.dialect, described[1])
                    for kind, described in zip(self.columns, cursor.description, strict=True)]
        finally:
            cursor.close()
        converted = [(i, process) for i, process in enumerate(convert) if process is not None]
        if not converted or not fetched:
            return [self.row._make(found) for found in fetched]
        # column by column: a third of the time of converting each row's values in turn
        columns: list[Any] = list(zip(*fetched, strict=True))
        for i, process in converted:
            columns[i] = map(process, columns[i])
        return list(map(self.row._make, zip(*columns, strict=True)))
