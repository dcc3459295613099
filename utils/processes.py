"""Locks and child processes: a lock belongs to the process that owns the work, and a worker process
dies with its parent.

A forked child inherits every open file descriptor, flock'ed ones included, and keeps running when its
parent is SIGKILLed: before this module, tokenizing workers orphaned that way kept the --model_fn lock
and the cache entry's lock for ever (a rerun was refused, or hung). Every lock taken here is
recorded, so a worker can close its copies at start, and a worker asks the kernel to kill it when its
parent dies (PR_SET_PDEATHSIG, Linux)."""
import ctypes
import ctypes.util
import fcntl
import os
import signal
import sys

_held_locks = set()  # file descriptors holding an flock of this process
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
    _held_locks.add(fd)
    return fd


def close_lock(fd):
    """Release the lock (closing the descriptor drops the flock)."""
    _held_locks.discard(fd)
    os.close(fd)


def become_worker(parent_pid):
    """In a freshly forked worker: drop the parent's locks (the parent owns the work they guard), die
    with the parent, leave Ctrl-C to it (the terminal sends SIGINT to the whole process group; the
    parent stops the workers itself), and take back SIGTERM's default."""
    for fd in list(_held_locks):
        try:
            os.close(fd)
        except OSError:
            pass
    _held_locks.clear()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above: nobody will kill us
        os._exit(1)


def run_forked(n_workers, task, total, desc, what, quiet=False):
    """Run `task(index, n_workers, report)` for each index in a forked worker process that dies with
    this one, showing one progress bar (`desc`) over `total` items (each worker calls `report(n)` as it
    goes). A worker that fails or is killed stops them all with one line about `what`; Ctrl-C or SIGTERM here stops them
    too. Forked, not spawned: a worker starts in milliseconds and shares this process's memory-mapped
    data instead of importing and reading it again."""
    import multiprocessing
    from multiprocessing.connection import wait

    from tqdm.auto import tqdm

    from utils.errors import UserError
    context = multiprocessing.get_context("fork")
    done = context.Value("q", 0)
    parent = os.getpid()

    def work(index, errors):
        become_worker(parent)

        def report(n):
            with done.get_lock():
                done.value += n
        try:
            task(index, n_workers, report)
        except BaseException as error:  # noqa: B036 - the parent decides; this process only reports it
            errors.send(f"{type(error).__name__}: {error}")
            os._exit(1)
        os._exit(0)  # no atexit handlers of the parent's in a fork

    workers, pipes = [], []
    try:
        for index in range(n_workers):
            receive, send = context.Pipe(duplex=False)
            worker = context.Process(target=work, args=(index, send), daemon=True)
            worker.start()
            send.close()
            workers.append(worker)
            pipes.append(receive)
        with tqdm(total=total, desc=desc, unit=" examples", disable=quiet) as bar:
            running = list(workers)
            while running:
                wait([worker.sentinel for worker in running], timeout=0.2)
                bar.update(done.value - bar.n)
                for worker, pipe in zip(workers, pipes):
                    if worker.exitcode not in (None, 0):
                        raise UserError(f"{what}: {_worker_death(worker, pipe)}")
                running = [worker for worker in running if worker.exitcode is None]
            bar.update(done.value - bar.n)
    finally:
        for worker in workers:
            if worker.exitcode is None:
                worker.kill()
            worker.join()


def _worker_death(worker, pipe):
    """Why a worker ended: its error, or the signal that killed it."""
    try:
        if pipe.poll():  # also true when the worker died without a word: then recv finds the end of the pipe
            return f"worker process {worker.pid} failed: {pipe.recv()}"
    except (EOFError, OSError):
        pass
    if worker.exitcode < 0:
        name = signal.Signals(-worker.exitcode).name
        hint = " (out of memory? try fewer --preprocessing_num_workers)" if name == "SIGKILL" else ""
        return f"worker process {worker.pid} was killed by {name}{hint}; nothing was cached: run again"
    return f"worker process {worker.pid} exited with status {worker.exitcode}; nothing was cached: run again"
