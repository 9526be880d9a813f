"""One SQLite file served by one dedicated thread: `run(fn, *args)` calls `fn(connection,
*args)` off the reactor and fires a Deferred; a Twisted service that opens and closes it."""

from __future__ import annotations

import sqlite3
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


def connect(path: str) -> sqlite3.Connection:
    """Open `path` the way every eformws process and command does (WAL, busy timeout)."""
    connection = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


class SQLiteDatabase(Service):
    def __init__(self, path: str, reactor=None):
        self.path = path
        self._reactor = reactor or _default_reactor()
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="eformws-sqlite")
        self._connection: sqlite3.Connection | None = None
        self._schemas: list[Callable[[sqlite3.Connection], None]] = []

    def add_schema(self, create: Callable[[sqlite3.Connection], None]) -> None:
        """Register a function that creates its tables; it runs before any other call."""
        self._schemas.append(create)

    def _connection_in_thread(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = connect(self.path)
            for create in self._schemas:
                create(connection)
            self._connection = connection
        return self._connection

    def run(self, fn: Callable[..., Any], *args: Any):
        def call():
            return fn(self._connection_in_thread(), *args)

        return deferToThreadPool(self._reactor, self._pool, call)

    def startService(self):
        super().startService()
        self._pool.start()

    def _close_in_thread(self):
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def stopService(self):
        super().stopService()
        d = deferToThreadPool(self._reactor, self._pool, self._close_in_thread)
        d.addBoth(lambda _: self._pool.stop())
        return d


def _default_reactor():
    from twisted.internet import reactor

    return reactor
