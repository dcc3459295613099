"""The local engine: shards classified in this process, or in a pool of worker processes on this machine,
each loading the model once."""
import os

from batch.shard_work import classify_shard, load_worker_classifier
from utils.processes import run_tasks
from utils.runtime import usable_cpus, worker_threads

LOCAL_DEFAULT_HELP = ("one process per core, each with one onnxruntime/torch thread (OMP_NUM_THREADS sets "
                      "them), measured faster than one process with a thread per core")


def default_workers():
    """One process per core, each with one thread: one-thread processes classified more lines per second
    and per CPU-second than one process with a thread per core, whose threads wait on each other at every
    small matmul of a batch (bench/classify_scale.py; docs/benchmarks.md, "Figures behind the code")."""
    return usable_cpus()


def classify_locally(job, pending, num_workers, finished):
    """Shards classified here (one worker), or in num_workers processes (batch/local_worker.py), each
    loading the model once and dying with this one (utils.processes.run_tasks)."""
    if not pending:
        return
    if num_workers == 1 or len(pending) == 1:
        _init_worker(worker_threads(1))
        classifier = load_worker_classifier(job)
        for shard in pending:
            finished(classify_shard(job, shard, classifier), shard)
        return
    # OMP_NUM_THREADS is read by onnxruntime's session (load_session) and by torch
    env = {"OMP_NUM_THREADS": str(worker_threads(num_workers)),
           "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false")}
    run_tasks("batch.local_worker", job, pending, num_workers, finished,
              "a worker process died (killed, or out of memory: try fewer --num_workers)", env=env)


def _init_worker(threads):
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by onnxruntime's session (load_session) and by torch
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
