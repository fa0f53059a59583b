"""Persistence behind one small interface; SQLite is the default backend."""

from connect.store.base import (
    CANCELLED,
    COMPLETED,
    DISCOVERY,
    FAILED,
    RUNNING,
    AppRecord,
    EventRecord,
    LeaseRecord,
    NewEvent,
    ReplyStore,
    RunRecord,
    StepMemo,
    Store,
    StoreClosed,
)
from connect.store.sqlite import SqliteStore

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "DISCOVERY",
    "FAILED",
    "RUNNING",
    "AppRecord",
    "EventRecord",
    "LeaseRecord",
    "NewEvent",
    "ReplyStore",
    "RunRecord",
    "SqliteStore",
    "StepMemo",
    "Store",
    "StoreClosed",
]
