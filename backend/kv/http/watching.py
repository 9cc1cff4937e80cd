"""The store's watch streams as the HTTP side reads them: one async iterator of responses.

The v2 wait and the v3 gateway's /v3/watch create their watchers on a WatchStream of their
own, exactly as a gRPC Watch does, and take its responses here. Two shapes of WatchStream
are served: the budgeted one (``next_output``/``written``: a response stays counted against
the stream's budget until the HTTP side has written it) and the earlier queue of responses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aetcd import rpc


async def responses(stream: Any) -> AsyncIterator[rpc.WatchResponse]:
    """Each response of ``stream`` until it ends; the caller closes the stream."""
    next_output = getattr(stream, "next_output", None)
    if next_output is not None:
        while (data := await next_output()) is not None:
            response = rpc.WatchResponse.FromString(data)
            yield response  # written once the consumer asks for the next one
            stream.written()
        return
    while (item := await stream.outbox.get()) is not None:
        yield rpc.WatchResponse.FromString(item) if isinstance(item, bytes) else item
        if stream.lagging:
            stream.catch_up()
