from __future__ import annotations

from connect.executor.triggers import MAX_RETRIES, TriggerIndex
from protocol.payloads import Event, FunctionConfig, Retries, Runtime, StepConfig, Trigger


def fn(fn_id: str, *triggers: Trigger, retries: int | None = None) -> FunctionConfig:
    step = StepConfig(
        id="step",
        name="step",
        runtime=Runtime(type="ws", url="wss://connect"),
        retries=None if retries is None else Retries(attempts=retries),
    )
    return FunctionConfig(id=fn_id, name=fn_id, triggers=list(triggers), steps={"step": step})


def matched(index: TriggerIndex, name: str, **data: object) -> list[str]:
    return [t.function_id for t in index.match(Event(name=name, data=dict(data)))]


def test_exact_and_wildcard_triggers() -> None:
    index = TriggerIndex()
    index.set_app(
        "a",
        [
            fn("a-exact", Trigger(event="app/x")),
            fn("a-wild", Trigger(event="app/*")),
            fn("a-deep", Trigger(event="app/x/*")),
            fn("a-all", Trigger(event="*")),
            fn("a-loose", Trigger(event="app/x*")),
            fn("a-cron", Trigger(cron="* * * * *")),
        ],
    )
    assert sorted(matched(index, "app/x")) == ["a-all", "a-exact", "a-loose", "a-wild"]
    assert sorted(matched(index, "app/x/y")) == ["a-all", "a-deep", "a-loose", "a-wild"]
    assert sorted(matched(index, "app/xy")) == ["a-all", "a-loose", "a-wild"]
    assert matched(index, "app") == ["a-all"]
    assert matched(index, "apple/x") == ["a-all"]


def test_a_function_starts_once_even_if_several_triggers_match() -> None:
    index = TriggerIndex()
    index.set_app("a", [fn("a-f", Trigger(event="app/x"), Trigger(event="app/*"))])
    assert matched(index, "app/x") == ["a-f"]


def test_sync_replaces_an_apps_functions_only() -> None:
    index = TriggerIndex()
    index.set_app("a", [fn("a-f", Trigger(event="e"))])
    index.set_app("b", [fn("b-f", Trigger(event="e"))])
    index.set_app("a", [fn("a-g", Trigger(event="other"))])
    assert matched(index, "e") == ["b-f"]
    assert matched(index, "other") == ["a-g"]


def test_expressions() -> None:
    index = TriggerIndex()
    index.set_app(
        "a",
        [
            fn("a-big", Trigger(event="paid", expression="event.data.total > 100")),
            fn("a-bad", Trigger(event="paid", expression="event.data.(")),
            fn("a-name", Trigger(event="paid", expression="event.name == 'paid'")),
        ],
    )
    assert matched(index, "paid", total=500) == ["a-big", "a-name"]
    assert matched(index, "paid", total=5) == ["a-name"]
    assert matched(index, "paid") == ["a-name"]  # a missing field is no match, not an error


def test_max_attempts_from_retries() -> None:
    index = TriggerIndex(default_retries=4)
    index.set_app(
        "a",
        [
            fn("a-default", Trigger(event="e")),
            fn("a-none", Trigger(event="e"), retries=0),
            fn("a-many", Trigger(event="e"), retries=100),
        ],
    )
    attempts = {t.function_id: t.max_attempts for t in index.match(Event(name="e"))}
    assert attempts == {"a-default": 5, "a-none": 1, "a-many": MAX_RETRIES + 1}
