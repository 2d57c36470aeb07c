"""asyncio helpers shared by the client and the worker.

`within` bounds an await by a timeout. On Python 3.11+ it uses
`asyncio.timeout`, which only arms a timer; `asyncio.wait_for` (3.10) wraps
the awaitable in a new task, a real cost when it guards every message read of
a busy stream.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["within"]

T = TypeVar("T")

if sys.version_info >= (3, 11):

    async def within(awaitable: Awaitable[T], seconds: float) -> T:
        """`awaitable`'s result; `asyncio.TimeoutError` after `seconds`."""
        async with asyncio.timeout(seconds):
            return await awaitable

else:  # pragma: no cover - Python 3.10

    async def within(awaitable: Awaitable[T], seconds: float) -> T:
        """`awaitable`'s result; `asyncio.TimeoutError` after `seconds`."""
        return await asyncio.wait_for(awaitable, seconds)
