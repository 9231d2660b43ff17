"""The cycle-collector pause: counted across threads, restored to what it was."""

import gc
import threading

from crm.infra.gc_pause import cycle_collector_paused


def test_the_collector_comes_back_when_the_last_of_overlapping_pauses_ends():
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def second() -> None:
        first_in.wait()
        with cycle_collector_paused():
            second_in.set()
            first_out.wait()
            seen.append(gc.isenabled())  # the first pause has ended; this one still holds

    assert gc.isenabled()
    thread = threading.Thread(target=second)
    thread.start()
    with cycle_collector_paused():
        first_in.set()
        second_in.wait()
    first_out.set()
    thread.join()
    assert seen == [False] and gc.isenabled()


def test_a_pause_leaves_a_disabled_collector_disabled():
    gc.disable()
    try:
        with cycle_collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_objects_alive_at_the_freeze_leave_the_collections_and_new_garbage_is_still_collected():
    import weakref

    from crm.infra.gc_pause import freeze_startup_objects

    class Node:
        pass

    kept = [[n] for n in range(1_000)]  # long-lived, as a server's routes and models are
    dead = Node()
    dead.self = dead  # cyclic garbage from before the freeze: collected first, not frozen for good
    dead_ref = weakref.ref(dead)
    del dead
    collected: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "stop":
            collected.append(info["collected"])

    try:
        frozen = freeze_startup_objects()
        assert frozen >= len(kept)  # not == get_freeze_count(): other threads may free frozen objects meanwhile
        assert dead_ref() is None
        tracked = {id(o) for o in gc.get_objects()}
        assert id(kept) not in tracked and not any(id(item) in tracked for item in kept)

        gc.callbacks.append(count)
        node = Node()
        node.self = node  # a cycle made after the freeze: only the collector frees it
        node_ref = weakref.ref(node)
        del node
        gc.collect()
        assert node_ref() is None and collected and collected[-1] >= 1
    finally:
        gc.unfreeze()
        if count in gc.callbacks:
            gc.callbacks.remove(count)
