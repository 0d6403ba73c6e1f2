"""diffalign.resources: what is freed is freed without a full collection unless a cycle holds it."""

import gc
import weakref

from diffalign import resources


class _Thing:
    pass


def test_a_cycle_held_object_is_collected_and_a_freed_one_costs_no_collection(monkeypatch):
    calls = []
    real = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(a) or real(*a))

    plain = _Thing()
    gone = weakref.ref(plain)
    del plain  # reference counting frees it at once
    resources.collect_if_kept(gone)
    assert gone() is None and calls == []

    gc.disable()  # no automatic collection between the two checks
    try:
        held = _Thing()
        held.me = held  # a cycle: only the collector frees it
        gone = weakref.ref(held)
        del held
        assert gone() is not None
        resources.collect_if_kept(gone)
    finally:
        gc.enable()
    assert gone() is None and len(calls) == 1

    resources.collect_if_kept()  # nothing let go: nothing to do
    assert len(calls) == 1
