"""Durable runs: triggers, step memoization, retries and sleeps."""

from connect.executor.service import Executor

__all__ = ["Executor"]
