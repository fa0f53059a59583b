"""The worker side: `connect()` and the connection it returns."""

from connect.worker.connection import ConnectionState, WorkerConnection, connect

__all__ = ["ConnectionState", "WorkerConnection", "connect"]
