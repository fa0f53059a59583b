"""Typed step and function outputs: turning Python objects into JSON and back by a declared type.

``step.run("load", load_order, output_type=Order)`` stores what ``load_order``
returned as JSON (``Serializer.serialize``) and hands the handler an ``Order``
both when the body runs and on every later replay (``Serializer.deserialize``
of the stored JSON), so a memoized step returns the same type it returned the
first time. ``create_function(output_type=...)`` does the same for a
function's return value (and ``step.invoke`` of it).

``PydanticSerializer`` (the default) takes any type pydantic can validate:
models, dataclasses, ``list[Order]``, ``datetime``, unions. It dumps in JSON
mode (datetimes as ISO strings, enums by value), refusing a value that is not
of the declared type (the step fails, as if its body had raised), and
validates on the way back. A client's ``serializer=`` replaces it with any object with the same two
methods. Without an ``output_type`` a value is stored as it is, and a pydantic
model anywhere in it (a step output, a function output, an event's data) is
dumped in JSON mode (``json_default``), coming back as plain JSON.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final, Protocol

import pydantic


class _NoOutputType:
    def __repr__(self) -> str:
        return "NO_OUTPUT_TYPE"


#: ``output_type`` not given: a value is stored and returned as plain JSON.
NO_OUTPUT_TYPE: Final[Any] = _NoOutputType()


class Serializer(Protocol):
    """Converts between a Python object of a declared type and JSON-compatible values."""

    def serialize(self, obj: object, typ: object) -> object:
        """``obj`` (of type ``typ``) as JSON-compatible values (dict, list, str, ...)."""
        ...

    def deserialize(self, obj: object, typ: object) -> object:
        """JSON-compatible values back into an object of type ``typ``."""
        ...


#: Adapters kept for this many distinct types (building one costs far more than using it).
ADAPTER_CACHE_SIZE: Final = 512


@lru_cache(maxsize=ADAPTER_CACHE_SIZE)
def _adapter(typ: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(typ)


def _adapter_for(typ: object) -> pydantic.TypeAdapter[Any]:
    try:
        return _adapter(typ)
    except TypeError:  # an unhashable type (Annotated with a dict): build one each time
        return pydantic.TypeAdapter(typ)  # type: ignore[arg-type]


class PydanticSerializer:
    """The default serializer: pydantic ``TypeAdapter``s, dumped in JSON mode."""

    def serialize(self, obj: object, typ: object) -> object:
        # A value that is not of the declared type is an error (pydantic only warns by default).
        return _adapter_for(typ).dump_python(obj, mode="json", warnings="error")

    def deserialize(self, obj: object, typ: object) -> object:
        return _adapter_for(typ).validate_python(obj)


def json_default(obj: Any) -> Any:
    """``enc_hook`` for msgspec: pydantic models as JSON-mode dicts; anything else is refused."""
    if isinstance(obj, pydantic.BaseModel):
        return obj.model_dump(mode="json")
    raise TypeError(f"Encoding objects of type {type(obj).__name__} is unsupported")
