"""Durable runs: triggers, step memoization, retries, parallel steps, timers, waits,
invokes, cancellation, cron and history retention."""

from connect.executor.service import Executor

__all__ = ["Executor"]
