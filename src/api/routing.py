"""One thread-pool hop per request for the routes that block (every route class of the API).

FastAPI runs a plain `def` endpoint in the thread pool, and then, when the route has a response
model, hops to the pool a second time to validate what the endpoint returned. `OneHopRoute`
hands FastAPI an `async def` that runs the endpoint in the pool itself: the blocking work still
never runs on the event loop, and the response is validated on the loop, where it is cheap. Each
hop cost 80-170 us of CPU on this machine (10,000 `anyio.to_thread.run_sync` calls in a throwaway
timing loop), and under load the second one is also a second wait for the GIL (BENCHMARKS.md,
"Levers tried for commands and queries").

The endpoint's signature, annotations and docstring are FastAPI's to read as before
(`functools.wraps` sets `__wrapped__`, which FastAPI follows for parameters, the response model
and forward references).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool


def in_thread_pool(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """A plain function becomes a coroutine function that runs it in the thread pool; coroutine
    functions and generator functions (FastAPI streams those itself) are returned as they are."""
    if (not inspect.isfunction(endpoint) or inspect.iscoroutinefunction(endpoint)
            or inspect.isgeneratorfunction(endpoint) or inspect.isasyncgenfunction(endpoint)):
        return endpoint

    @functools.wraps(endpoint)
    async def hop(*args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(endpoint, *args, **kwargs)

    return hop


class OneHopRoute(APIRoute):
    """An APIRoute whose blocking endpoint costs one thread-pool hop, not two."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, in_thread_pool(endpoint), **kwargs)
