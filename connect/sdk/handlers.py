"""The two handler styles, and how a handler's style is told from its parameters.

- ``async def f(ctx)`` / ``def f(ctx)``: the official SDK's style; the step
  tools are ``ctx.step`` and ``ctx.group``.
- ``async def f(ctx, step)`` / ``def f(ctx, step)``: the step tools are also
  passed as the second argument (``step is ctx.step``).

A handler that accepts two positional arguments is called with two (so
``f(ctx, step=None)`` and ``f(*args)`` get the step too); one that accepts only
one is called with ``ctx`` alone. Anything else is refused when the function
is created. ``async def`` handlers (or objects with an ``async def
__call__``) get a ``Context`` and run on the worker's event loop; any other
callable gets a ``ContextSync`` and runs in a worker thread.
"""

from __future__ import annotations

import inspect

from connect.sdk.errors import FunctionConfigError


def is_async_callable(handler: object) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - looking for an async __call__
    return inspect.iscoroutinefunction(call)


def takes_step(fn_id: str, handler: object) -> bool:
    """True for the ``(ctx, step)`` style, False for ``(ctx)``; raises ``FunctionConfigError`` for neither."""
    if not callable(handler):
        raise FunctionConfigError(f"{fn_id}: the handler must be callable")
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return True  # some callables have no introspectable signature; trust them
    for args in ((None, None), (None,)):
        try:
            signature.bind(*args)
        except TypeError:
            continue
        return len(args) == 2
    raise FunctionConfigError(
        f"{fn_id}: the handler must accept one positional argument (ctx) or two (ctx, step), "
        f"got {getattr(handler, '__name__', handler)!r}{signature}"
    )
