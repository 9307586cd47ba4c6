"""Where the ALIGN stage's work crosses between the server's event loop and its worker
threads — the one place it does (issue 25 item 4).

Two sides, each owning its state:

- **the event loop** owns the gRPC streams and everything about them: the score
  sessions (:mod:`server.align.sessions`), the phase planner's drivers
  (:mod:`server.align.planner`), the round engine;
- **the stage's worker thread** owns the stage (:class:`server.align.stage.AlignStage`):
  the policy, GRPO, the router, checkpoints; CPU-bound for seconds to minutes per step.
  The reward it calls (:class:`server.align.reward.MixtureReward`) asks the clients from a
  small pool of scoring threads, one per client.

Work crosses only through the two functions below. The loop hands the stage a whole
piece of work with :func:`off_loop` and awaits it (the loop keeps serving every stream
meanwhile); a worker thread asks the loop for a client's scores with :func:`on_loop`,
which blocks that thread only, with a deadline, never the loop. Nothing else of the
stage touches the loop, and nothing on the loop touches the policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# A worker waits this long past the coroutine's own deadline before giving up on the loop
# itself (the coroutine's deadline fires first; this only bounds a wedged loop).
LOOP_GRACE_S = 5.0


async def off_loop(work: Callable[..., T], *args: Any) -> T:
    """Run ``work(*args)`` on a worker thread and await its result on the loop."""
    return await asyncio.to_thread(work, *args)


def on_loop(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T], *, timeout_s: float) -> T:
    """From a worker thread: run ``coroutine`` on ``loop`` and wait for its result, at
    most ``timeout_s`` + :data:`LOOP_GRACE_S`; raises what the coroutine raised, or
    TimeoutError. Never call it from the loop's own thread (it would wait on itself)."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coroutine.close()
        raise RuntimeError("on_loop called from the event loop's own thread")
    future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    try:
        return future.result(timeout_s + LOOP_GRACE_S)
    except TimeoutError:
        future.cancel()
        raise
