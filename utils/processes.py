"""Locks and child processes: a lock belongs to the process that owns the work, and a worker process
dies with its parent.

A forked child inherits every open file descriptor, flock'ed ones included, and keeps running when its
parent is SIGKILLed: before this module, datasets' forked tokenizing workers orphaned that way kept the
--model_fn lock and the cache entry's lock for ever (a rerun was refused, or hung). Workers here are new
interpreters, which inherit no descriptor but their pipes, and ask the kernel to kill them when their
parent dies (PR_SET_PDEATHSIG, Linux)."""
import ctypes
import ctypes.util
import fcntl
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def open_lock(path, blocking=True):
    """An flock'ed descriptor on `path` (created if missing). Non-blocking: BlockingIOError when another
    process holds it. OSError when the file cannot be opened for writing."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BaseException:
        os.close(fd)
        raise
    return fd


def close_lock(fd):
    """Release the lock (closing the descriptor drops the flock)."""
    os.close(fd)


def become_worker(parent_pid):
    """At a worker's start: die with the parent, and leave Ctrl-C to it (the terminal sends SIGINT to
    the whole process group; the parent stops its workers itself)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(parent_pid)


def die_with_parent(parent_pid):
    """Ask the kernel to kill this process when its parent dies (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above: nobody will kill us
        os._exit(1)


def run_workers(module, job, directory, n_workers, total, desc, what, quiet=False):
    """Run `python -m module SPEC INDEX N PARENT_PID` in n_workers processes that die with this one: each
    unpickles `job` from SPEC and does shard INDEX of N into `directory`, printing how many items it has
    done as lines on stdout, summed here into one progress bar (`desc`) over `total` items. A worker that
    fails or is killed stops them all with one line about `what`; Ctrl-C or SIGTERM here stops them too.

    New interpreters, not forks of this one: a worker imports only what its module needs (datasets and the
    tokenizer, about 170 MB), where a fork of a trainer carries torch and the model. On 1M lines the
    trainer's process tree peaked at 2.17 GB with datasets' forked pool (docs/benchmarks.md)."""
    import pickle
    import selectors
    import subprocess
    import tempfile
    from pathlib import Path

    from tqdm.auto import tqdm

    from utils.errors import UserError
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "TOKENIZERS_PARALLELISM": "false"}  # a process per core already: no thread pool each on top
    spec = Path(directory) / ".job.pkl"  # in the entry being built: a killed run's goes with its directory
    workers = []
    selector = selectors.DefaultSelector()
    try:
        with open(spec, "wb") as f:
            pickle.dump((job, str(directory)), f)
        for index in range(n_workers):
            errors = tempfile.TemporaryFile()  # a file, not a pipe: a chatty worker cannot block on it
            worker = subprocess.Popen([sys.executable, "-m", module, str(spec), str(index), str(n_workers),
                                       str(os.getpid())], stdout=subprocess.PIPE, stderr=errors,
                                      stdin=subprocess.DEVNULL, env=env, cwd=root)
            worker.errors = errors
            workers.append(worker)
            selector.register(worker.stdout, selectors.EVENT_READ, worker)
        with tqdm(total=total, desc=desc, unit=" examples", disable=quiet) as bar:
            while selector.get_map():
                for key, _ in selector.select(timeout=0.5):
                    line = key.fileobj.readline()
                    if line.strip().isdigit():
                        bar.update(int(line))
                    elif not line:  # the worker closed its stdout: it has ended
                        selector.unregister(key.fileobj)
                        worker = key.data
                        if worker.wait() != 0:
                            raise UserError(f"{what}: {_worker_death(worker)}")
    finally:
        selector.close()
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
            worker.stdout.close()
            worker.errors.close()
        spec.unlink(missing_ok=True)


def worker_main(run):
    """The body of a worker module: `run(job, directory, index, n_shards, report)` with the arguments
    run_workers gave; an error is one line on stderr and exit 1."""
    import pickle
    spec, index, n_shards, parent = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    become_worker(parent)
    try:
        with open(spec, "rb") as f:
            job, directory = pickle.load(f)

        def report(n):
            sys.stdout.write(f"{n}\n")
            sys.stdout.flush()
        run(job, directory, index, n_shards, report)
    except Exception as error:  # the parent turns it into its one line
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)


def _worker_death(worker):
    """Why a worker ended: its error, or the signal that killed it."""
    if worker.returncode < 0:
        name = signal.Signals(-worker.returncode).name
        hint = " (out of memory? try fewer --preprocessing_num_workers)" if name == "SIGKILL" else ""
        return f"worker process {worker.pid} was killed by {name}{hint}; nothing was cached: run again"
    worker.errors.seek(0)
    error = worker.errors.read().decode(errors="replace").strip()
    why = error.splitlines()[0] if error else f"exit status {worker.returncode}"
    return f"worker process {worker.pid} failed: {why}"
