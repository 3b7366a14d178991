"""A small asyncio helper shared by the modules that must not be cut short."""

from __future__ import annotations

import asyncio
from typing import Any


async def settle(fut: asyncio.Future[Any]) -> bool:
    """Wait until ``fut`` is done even if we are cancelled meanwhile.

    Returns True when a cancellation arrived while waiting: the caller
    finishes its cleanup with the outcome in hand, then raises
    ``CancelledError`` itself. For steps that leave an fd or a process in
    an unknown state when interrupted half-way.
    """
    cancelled = False
    while not fut.done():
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            cancelled = True
    return cancelled
