"""A throw-away schema in a PostgreSQL database, for tests and benchmarks that share one server."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def scratch_schema(url: str, *, prefix: str) -> Iterator[str]:
    """``url`` pointed at a fresh schema (its search_path), dropped with everything in it after."""
    import sqlalchemy as sa

    from serve.db import normalize_database_url

    base = normalize_database_url(url)
    schema = f"{prefix}_{secrets.token_hex(6)}"
    admin = sa.create_engine(base)
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
