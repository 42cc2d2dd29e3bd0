"""The push edge: takes every ring and withdrawal the hub delivers, and pushes them to devices
without ever holding up the hub, a WebSocket ring or an accept.

``observe`` only enqueues. Planning (which devices, recorded in the store) runs in a few workers,
each owning a share of the users, so that one user's ring is always planned before its
withdrawal. Every send is its own task; a semaphore bounds how many are in flight, each attempt
has its own timeout, and 429/5xx/timeouts are retried with bounded backoff. A withdrawal for a
device waits for that device's ring push to finish first (and stops its retries), so a push
service never receives the ring after the withdrawal that replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from dataclasses import dataclass, field

from broker.clock import Clock
from broker.events import Assigned, Event, Ring, Withdrawn
from broker.model import WithdrawReason
from broker.notify.devices import Platform
from broker.notify.outcome import Answer, Backoff, Result
from broker.notify.payloads import PushKind
from broker.notify.planner import PushJob, PushPlanner
from broker.store.base import Store
from signaling.metrics import Metrics
from signaling.push.base import Sender

log = logging.getLogger("vabroker.push")

QUEUE_LIMIT = 100_000  # events waiting to be planned; past this, pushes are dropped and counted


@dataclass
class _RingSend:
    task: asyncio.Task[None]
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class Pusher:
    def __init__(
        self,
        planner: PushPlanner,
        senders: dict[Platform, Sender],
        store: Store,
        clock: Clock,
        metrics: Metrics,
        concurrency: int = 500,
        timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        planners: int = 8,
    ) -> None:
        self.planner = planner
        self.senders = senders
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.backoff = backoff or Backoff()
        self._slots = asyncio.Semaphore(concurrency)
        self._queues: list[asyncio.Queue[tuple[Ring | Withdrawn, bool]]] = [
            asyncio.Queue(QUEUE_LIMIT // planners) for _ in range(planners)
        ]
        self._workers: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Task[None]] = set()
        self._rings: dict[tuple[str, str], _RingSend] = {}
        self._busy = 0  # events observed and not yet fully pushed
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def platforms(self) -> frozenset[Platform]:
        return frozenset(self.senders)

    # --- the hub's hook --------------------------------------------------------------------
    def observe(self, event: Event, here: bool) -> None:
        """Called by the hub for every event it delivers; ``here`` says it reached a WebSocket
        session on this node. Never blocks."""
        if isinstance(event, Assigned) and not event.offerer and not event.resumed:
            # The helper answered on one device: their other pushed devices stop ringing too.
            event = Withdrawn(event.to, event.call_id, WithdrawReason.ANSWERED)
        if not isinstance(event, Ring | Withdrawn):
            return
        queue = self._queues[zlib.crc32(event.to.encode()) % len(self._queues)]
        try:
            queue.put_nowait((event, here))
        except asyncio.QueueFull:
            log.error("push queue full, dropping", extra={"call": event.call_id})
            self.metrics.pushes.labels("any", "dropped").inc()
            return
        self._busy += 1
        self._idle.clear()

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        for sender in self.senders.values():
            await sender.start()
        self._workers = [
            asyncio.create_task(self._plan(q), name=f"push-planner-{i}")
            for i, q in enumerate(self._queues)
        ]

    async def close(self) -> None:
        tasks = [*self._workers, *self._sends]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sender in self.senders.values():
            await sender.close()

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until everything observed so far has been pushed (or given up)."""
        async with asyncio.timeout(timeout_s):
            await self._idle.wait()

    def _done(self) -> None:
        self._busy -= 1
        if self._busy == 0:
            self._idle.set()

    # --- planning --------------------------------------------------------------------------
    async def _plan(self, queue: asyncio.Queue[tuple[Ring | Withdrawn, bool]]) -> None:
        while True:
            event, here = await queue.get()
            try:
                if isinstance(event, Ring):
                    jobs = await self.planner.ring(event, here)
                else:
                    assert isinstance(event, Withdrawn)
                    jobs = await self.planner.withdrawn(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("planning a push failed", extra={"call": event.call_id})
                jobs = []
            for job in jobs:
                self._busy += 1
                self._spawn(job)
            self._done()

    def _spawn(self, job: PushJob) -> None:
        key = (job.push.call_id, job.device.id)
        if job.push.kind is PushKind.RING:
            stop = asyncio.Event()
            task = asyncio.create_task(self._deliver(job, stop))
            self._rings[key] = _RingSend(task, stop)
        else:
            task = asyncio.create_task(self._withdraw(job, self._rings.get(key)))
        self._sends.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            self._sends.discard(t)
            ring = self._rings.get(key)
            if ring is not None and ring.task is t:
                del self._rings[key]
            self._done()

        task.add_done_callback(finished)

    # --- sending ---------------------------------------------------------------------------
    async def _withdraw(self, job: PushJob, ring: _RingSend | None) -> None:
        if ring is not None and not ring.task.done():
            ring.stop.set()  # no more retries of a ring that is gone
            await asyncio.wait([ring.task])
        await self._deliver(job, None)

    async def _deliver(self, job: PushJob, stop: asyncio.Event | None) -> None:
        device, push = job.device, job.push
        platform = device.platform.value
        sender = self.senders[device.platform]
        started = time.monotonic()
        attempt = 0
        while True:
            async with self._slots:
                answer = await self._attempt(sender, job)
            if answer.result is not Result.RETRY:
                break
            delay = self.backoff.delay(attempt, answer.retry_after_s)
            ring_over = push.kind is PushKind.RING and (
                delay is None or self.clock.now() + delay >= push.expires_at
            )
            if delay is None or ring_over or (stop is not None and stop.is_set()):
                answer = Answer(Result.FAILED, answer.status, f"gave up: {answer.reason}")
                break
            self.metrics.pushes.labels(platform, "retried").inc()
            if stop is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    answer = Answer(Result.FAILED, answer.status, "withdrawn while retrying")
                    break
            else:
                await asyncio.sleep(delay)
            attempt += 1
        self.metrics.pushes.labels(platform, answer.result.value).inc()
        extra = {
            "call": push.call_id,
            "device": device.id,
            "push": push.kind.value,
            "status": answer.status,
        }
        if answer.result is Result.SENT:
            self.metrics.push_seconds.labels(platform).observe(time.monotonic() - started)
            log.debug("pushed", extra=extra)
        elif answer.result is Result.PRUNE:
            log.info("device gone, removing it: %s", answer.reason, extra=extra)
            try:
                await self.store.remove_device(device.user_id, device.id)
            except Exception:
                log.exception("removing a device failed", extra=extra)
        else:
            log.warning("push failed: %s", answer.reason, extra=extra)

    async def _attempt(self, sender: Sender, job: PushJob) -> Answer:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await sender.send(job.device, job.push, self.clock.now())
        except TimeoutError:
            return Answer(Result.RETRY, 0, f"no answer within {self.timeout_s:g} s")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection refused, reset, TLS failure...
            return Answer(Result.RETRY, 0, f"{type(exc).__name__}: {exc}")
