"""run_rounds: a round that did work is followed at once, an idle one waits as long as idle_wait
says (asked after the round), and a failure, also of idle_wait, takes the backoff path."""

from __future__ import annotations

import threading

from crm.infra.followers import run_rounds


class Stop(threading.Event):
    """Records every wait instead of waiting, and stops the loop after `rounds` of them."""

    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.rounds, self.waits = rounds, []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if len(self.waits) >= self.rounds:
            self.set()
        return self.is_set()


def test_an_idle_round_waits_as_long_as_the_callable_says_and_a_busy_one_not_at_all() -> None:
    results = iter([3, 0, 5, 0])  # work, idle, work, idle
    asked = []

    def idle_wait() -> float:
        asked.append(True)
        return 0.037 * len(asked)

    stop = Stop(rounds=2)
    run_rounds(stop, lambda: next(results), name="t", idle_wait=idle_wait)
    assert stop.waits == [0.037, 0.074]  # only after the idle rounds, each asked anew
    assert len(asked) == 2  # never asked after a round that did work


def test_a_fixed_idle_wait_still_works() -> None:
    stop = Stop(rounds=1)
    run_rounds(stop, lambda: 0, name="t", idle_wait=0.2)
    assert stop.waits == [0.2]


def test_a_failing_idle_wait_is_an_outage_with_backoff_not_a_crash() -> None:
    failures = []

    def idle_wait() -> float:
        raise ConnectionError("database away")

    stop = Stop(rounds=3)
    run_rounds(stop, lambda: 0, name="t", idle_wait=idle_wait, on_error=lambda: failures.append(1))
    assert stop.waits == [0.1, 0.2, 0.4] and len(failures) == 3  # backoff doubling, on_error each time
