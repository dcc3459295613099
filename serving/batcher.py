"""Dynamic batching: concurrent requests share the model's forward passes.

Requests wait in a queue; the batcher takes the oldest, then keeps taking until the batch holds
--max_batch_size texts, or as many as the last round brought (the last batch's and those that came in
while it ran: a lone client is answered at once), or --max_wait_ms has passed, and runs the whole
batch in one worker thread (the event loop keeps accepting requests meanwhile). The classifier sorts
the batch by length and runs it in passes of at most --batch_size texts and --max_batch_tokens padded
tokens. The queue is bounded by texts, not requests: past --max_queue a request is refused at once
(HTTP 503) instead of waiting without end. A batch that fails is run again request by request, so
only the request that fails gets the error."""
import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


class Overloaded(Exception):
    """The queue holds --max_queue texts already."""


@dataclass
class QueuedRequest:
    items: list  # (text, pair) pairs
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, classifier, max_batch_size, max_wait_ms, max_queue, metrics):
        self.classifier = classifier
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.metrics = metrics
        self.waiting = deque()  # jobs not yet in a batch, oldest first
        self.arrived = asyncio.Event()
        self.queued_texts = 0  # texts waiting in the queue, not yet in a batch
        # How many texts the next batch can expect: those of the last batch (their clients come back) and
        # those that arrived while it ran. A batch waits for company only up to that many: a lone client
        # is answered at once, and 8 clients run as soon as all 8 are back. A new server expects a lone
        # client: its first request runs at once (expecting a full batch made it wait all of --max_wait_ms).
        self.expected = 1
        self.task = None
        # One thread: batches run one after another, each using all of the backend's intra-op threads.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="classify")

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self):
        """After the server has answered every request in flight (uvicorn waits for them first)."""
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=True)

    @property
    def healthy(self):
        return self.task is not None and not self.task.done()

    async def predict(self, items):
        """The classifier's Prediction (inference.classifier) of these items, computed in a shared batch;
        Overloaded when the queue is full."""
        if self.queued_texts + len(items) > self.max_queue:
            raise Overloaded(f"{self.queued_texts} texts are waiting (--max_queue {self.max_queue})")
        job = QueuedRequest(items, asyncio.get_running_loop().create_future())
        self.queued_texts += len(items)
        self.metrics.queue_length.set(self.queued_texts)
        self.waiting.append(job)
        self.arrived.set()
        return await job.future

    async def run(self):
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self.gather()
            items = [item for job in jobs for item in job.items]
            self.metrics.batch_size.observe(len(items))
            started = time.perf_counter()
            try:
                prediction = await loop.run_in_executor(self.executor, self.classifier.predict, items)
            except Exception as error:  # a failed batch fails its requests, not the server
                await self.one_by_one(jobs, error)
                continue
            self.metrics.inference_seconds.observe(time.perf_counter() - started)
            self.expected = len(items) + self.queued_texts
            start = 0
            for job in jobs:
                end = start + len(job.items)
                if not job.future.done():  # the client may have gone
                    job.future.set_result(prediction.rows(start, end))
                start = end

    async def one_by_one(self, jobs, error):
        """A batch failed: run its requests alone, so that only the one that fails gets the error."""
        loop = asyncio.get_running_loop()
        for job in jobs:
            try:
                result = error if len(jobs) == 1 else await loop.run_in_executor(
                    self.executor, self.classifier.predict, job.items)
            except Exception as own_error:
                result = own_error
            if not job.future.done():
                if isinstance(result, Exception):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    async def gather(self):
        """The next batch: the oldest job, then whatever arrives until the batch is full or the wait is over.
        A job that would overflow the batch stays first in line for the next one."""
        while not self.waiting:
            self.arrived.clear()
            await self.arrived.wait()
        jobs = [self.waiting.popleft()]
        size = len(jobs[0].items)
        # Waiting for the expected texts only: a fixed wait delayed a lone client by the whole wait and idled
        # the model once a round with several clients (docs/benchmarks.md, "Figures behind the code").
        deadline = time.perf_counter() + self.max_wait
        while size < min(self.max_batch_size, self.expected):
            if not self.waiting:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), remaining)
                except TimeoutError:
                    break
                continue
            if size + len(self.waiting[0].items) > self.max_batch_size:
                break
            jobs.append(self.waiting.popleft())
            size += len(jobs[-1].items)
        self.queued_texts -= size
        self.metrics.queue_length.set(self.queued_texts)
        now = time.perf_counter()
        for job in jobs:
            self.metrics.queue_seconds.observe(now - job.queued_at)
        return jobs
