"""Chat messages stored in batches: one transaction for what arrives together.

Every sync database call a consumer makes runs in the process's one
database thread, and each query there waits for the event loop to let go of
the GIL. A busy room therefore spends its time waiting, not storing: at
150 messages/s, three queries each, the thread could not keep up
(docs/performance.md). The process's :class:`MessageWriter` stores the
chat messages of all its sockets: the first message goes at once, and what
arrives while a batch is in the database goes in the next batch, for two
queries per room and one insert in all (``services.post_messages``). So
batches are one message long when the chat is quiet and grow with the load.
"""

import asyncio
import logging
import weakref

from chat import metrics, services
from chat.realtime import gateway
from chat.realtime.hub import get_hub

logger = logging.getLogger(__name__)

# The most messages one transaction stores (one insert of this many rows).
MAX_BATCH = 200


class MessageWriter:
    """Stores this process's chat messages, batching those that wait."""

    def __init__(self) -> None:
        self._waiting: list[tuple[services.Post, asyncio.Future[services.Posted]]] = []
        self._task: asyncio.Task[None] | None = None

    async def post(self, post: services.Post) -> services.Posted:
        """Store ``post`` (with whatever else is waiting) and broadcast it; return it stored.

        Raises what storing raised: ``ValidationError`` for this post alone,
        a database error for its whole batch.
        """
        post = post.validated()  # a bad post fails alone, not its batch
        future: asyncio.Future[services.Posted] = asyncio.get_running_loop().create_future()
        self._waiting.append((post, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._store_waiting())
        return await future

    async def _store_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                stored = await self._store([post for post, _ in batch])
            except Exception as exc:  # the database failed: each sender hears so
                for _post, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            metrics.batch_stored(posts=len(batch), created=sum(posted.created for posted in stored))
            for (_post, future), posted in zip(batch, stored, strict=True):
                if not future.done():  # its socket may have closed meanwhile
                    future.set_result(posted)

    async def _store(self, posts: list[services.Post]) -> list[services.Posted]:
        # Events the layer (Redis) refuses go to this process's tabs at once;
        # other processes' hubs read them from the database when it is back.
        return await gateway.run_service(services.post_messages, deliver_locally=get_hub().dispatch, posts=posts)


_writers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MessageWriter]" = weakref.WeakKeyDictionary()


def get_writer() -> MessageWriter:
    """Return this event loop's writer."""
    loop = asyncio.get_running_loop()
    writer = _writers.get(loop)
    if writer is None:
        writer = _writers[loop] = MessageWriter()
    return writer
