"""The local engine: shards classified in this process, or in a pool of worker processes on this machine,
each loading the model once."""
import os
from itertools import islice

from batch.shard_work import classify_shard, load_worker_classifier
from utils.errors import UserError
from utils.runtime import usable_cpus, worker_threads

LOCAL_DEFAULT_HELP = ("one process per core, each with one onnxruntime/torch thread (OMP_NUM_THREADS sets "
                      "them), measured faster than one process with a thread per core")


def default_workers():
    """One process per core. bench/classify_scale.py, MiniLM int8 on 2 cores (docs/benchmarks.md): two
    one-thread processes 235 lines/s and 243 lines per CPU-second, one process with two onnxruntime
    threads 151 and 189 (its threads wait on each other at every small matmul of a batch)."""
    return usable_cpus()


def run_local(job, pending, num_workers, finished):
    """Shards classified here (one worker), or in num_workers processes, each loading the model once."""
    if not pending:
        return
    if num_workers == 1 or len(pending) == 1:
        _init_worker(worker_threads(1))
        classifier = load_worker_classifier(job)
        for shard in pending:
            finished(classify_shard(job, shard, classifier), shard)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    threads = worker_threads(num_workers)
    # spawn, not fork: a fork of a process with onnxruntime's or torch's thread pools can deadlock
    with ProcessPoolExecutor(min(num_workers, len(pending)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        running = {}
        queue = iter(pending)
        try:
            for shard in islice(queue, 2 * num_workers):  # a few queued: the driver never holds every shard's task
                running[pool.submit(_classify_in_worker, job, shard)] = shard
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    shard = running.pop(future)
                    finished(_result(future), shard)
                    for more in islice(queue, 1):
                        running[pool.submit(_classify_in_worker, job, more)] = more
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _result(future):
    from concurrent.futures.process import BrokenProcessPool
    try:
        return future.result()
    except BrokenProcessPool:
        raise UserError("a worker process died (killed, or out of memory: try fewer --num_workers)") from None


_worker_classifier = None


def _init_worker(threads):
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by onnxruntime's session (load_session) and by torch
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _classify_in_worker(job, shard):
    global _worker_classifier
    if _worker_classifier is None:
        _worker_classifier = load_worker_classifier(job)
    return classify_shard(job, shard, _worker_classifier)
