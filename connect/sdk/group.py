"""``ctx.group``: helpers that group steps, as the official SDK's ``Context.group`` has."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from connect.sdk.step import ParallelMode, Step, StepSync

T = TypeVar("T")


class Group:
    """Step groups for ``async def`` handlers."""

    def __init__(self, step: Step) -> None:
        self._step = step

    async def parallel(
        self,
        callables: Sequence[Callable[[], Awaitable[T]]],
        parallel_mode: ParallelMode | str = "wait",
    ) -> tuple[T, ...]:
        """Run the steps of several callables concurrently; their results in order.

        ``await ctx.group.parallel((lambda: ctx.step.run("a", fa), lambda: ctx.step.run("b", fb)))``;
        the rules are ``Step.parallel``'s.
        """
        return await self._step.parallel(callables, parallel_mode)


class GroupSync:
    """Step groups for plain ``def`` handlers."""

    def __init__(self, step: StepSync) -> None:
        self._step = step

    def parallel(
        self,
        callables: Sequence[Callable[[], T]],
        parallel_mode: ParallelMode | str = "wait",
    ) -> tuple[T, ...]:
        """Run the steps of several callables concurrently (see ``Group.parallel``)."""
        return self._step.parallel(callables, parallel_mode)
