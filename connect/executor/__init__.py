"""Durable runs: triggers, step memoization, retries, parallel steps, timers, waits,
invokes, cancellation and cron."""

from connect.executor.service import Executor

__all__ = ["Executor"]
