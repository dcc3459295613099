"""Locks and child processes: a lock belongs to the process that owns the work, and a worker process
dies with its parent.

A forked child inherits every open file descriptor, flock'ed ones included, and keeps running when its
parent is SIGKILLed: before this module, datasets' forked tokenizing workers orphaned that way kept the
--model_fn lock and the cache entry's lock for ever (a rerun was refused, or hung), and the file mode's
pool workers, orphaned, kept classifying and renaming part files into --output_fn (issue 33). Every worker
process starts here (start_worker): a new interpreter, which inherits no descriptor but its pipes, told
its parent's pid, and asking the kernel at its start to kill it when that parent dies (PR_SET_PDEATHSIG,
Linux). On top of it: run_workers (one fixed shard each, with a progress bar: tokenizing) and run_tasks (a
queue of tasks, the next to whichever worker is free: the file mode's local engine); --hp_search starts
its trials with start_worker too."""
import ctypes
import ctypes.util
import fcntl
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1
PARENT_ENV = "FINETUNE_PLM_PARENT"  # in a worker's environment: the pid of the process it dies with
ROOT = Path(__file__).resolve().parents[1]


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


def start_worker(command, env=None, **popen):
    """Start a worker process: `python COMMAND...`, a new interpreter (not a fork of this one: it inherits
    no lock, thread pool or model) with the project importable and this process's pid in PARENT_ENV. The
    worker calls become_worker (or die_with_parent) first, so that it dies with this process however this
    one ends, SIGKILL included. `env` is added to this process's environment; the rest goes to Popen.
    Call it from the main thread: the kernel kills the worker when the thread that started it ends."""
    import subprocess
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           PARENT_ENV: str(os.getpid()), **(env or {})}
    return subprocess.Popen([sys.executable, *command], env=env, **popen)


def wait_for_worker(child):
    """child.wait(), except that a SIGTERM whose exception was lost (utils.errors.check_terminated) stops the wait
    within half a second, as the exception would have at once."""
    import subprocess

    from utils.errors import check_terminated
    while True:
        try:
            status = child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            status = None
        check_terminated()
        if status is not None:
            return status


def become_worker():
    """At a worker's start: die with the parent, and leave Ctrl-C to it (the terminal sends SIGINT to
    the whole process group; the parent stops its workers itself)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()


def die_with_parent(parent=None, signum=signal.SIGKILL):
    """Ask the kernel to send this process `signum` when its parent dies (Linux): SIGKILL for a worker
    started by start_worker; the Ray driver child (batch/ray_engine.py), told its parent's pid, asks for
    SIGTERM so that it shuts down the cluster it started. Exit now if the parent has already died."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum)
    _exit_if_orphaned(parent)  # the parent may have died before the line above: then nobody will signal us


def _exit_if_orphaned(parent=None):
    """Exit if the parent has died (this process was adopted by another): the check where PR_SET_PDEATHSIG
    is missing (not Linux) or came too late."""
    if os.getppid() != (parent or int(os.environ[PARENT_ENV])):
        os._exit(1)


def run_workers(module, job, directory, n_workers, total, desc, what, quiet=False):
    """Run `python -m module SPEC INDEX N` in n_workers processes that die with this one: each
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

    from tqdm.auto import tqdm

    from utils.errors import UserError
    env = {"TOKENIZERS_PARALLELISM": "false"}  # a process per core already: no thread pool each on top
    spec = Path(directory) / ".job.pkl"  # in the entry being built: a killed run's goes with its directory
    workers = []
    selector = selectors.DefaultSelector()
    try:
        with open(spec, "wb") as f:
            pickle.dump((job, str(directory)), f)
        for index in range(n_workers):
            errors = tempfile.TemporaryFile()  # a file, not a pipe: a chatty worker cannot block on it
            worker = start_worker(["-m", module, str(spec), str(index), str(n_workers)], env=env, cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL)
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
        stop_workers(workers, lambda worker: (worker.stdout, worker.errors))
        spec.unlink(missing_ok=True)


def worker_main(run):
    """The body of a worker module: `run(job, directory, index, n_shards, report)` with the arguments
    run_workers gave; an error is one line on stderr and exit 1."""
    import pickle
    spec, index, n_shards = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    become_worker()
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


def run_tasks(module, job, tasks, n_workers, finished, died, env=None):
    """Run `tasks` in up to n_workers processes of `python -m module` (start_worker: they die with this one),
    each sent `job` once, then one task at a time: a free worker takes the next. finished(result, task)
    runs here as each is done. A task's exception is raised here; a worker that dies raises UserError(died).
    Any error, Ctrl-C or SIGTERM here kills the workers. The module's body is serve_tasks."""
    import pickle
    import selectors
    import subprocess

    from utils.errors import UserError
    queue = iter(tasks)
    workers = []
    selector = selectors.DefaultSelector()

    def send(worker, message):
        try:
            pickle.dump(message, worker.stdin)
            worker.stdin.flush()
        except BrokenPipeError:  # it died before reading it
            raise UserError(died) from None

    def next_task(worker):
        worker.task = next(queue, _NONE_LEFT)
        if worker.task is _NONE_LEFT:  # its stdin closes, and it ends
            selector.unregister(worker.stdout)
            worker.stdin.close()
        else:
            send(worker, worker.task)

    try:
        for _ in range(min(n_workers, len(tasks))):
            worker = start_worker(["-m", module], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            workers.append(worker)
            selector.register(worker.stdout, selectors.EVENT_READ, worker)
            send(worker, job)
            next_task(worker)
        while selector.get_map():
            for key, _ in selector.select():
                worker = key.data
                try:
                    failed, value, where = pickle.load(worker.stdout)  # one reply a task: nothing else is buffered
                except (EOFError, pickle.UnpicklingError):  # it died: its stdout closed, maybe mid-reply
                    raise UserError(died) from None
                if failed:
                    value.__cause__ = WorkerTraceback(where)
                    raise value
                finished(value, worker.task)
                next_task(worker)
    finally:
        selector.close()
        stop_workers(workers, lambda worker: (worker.stdin, worker.stdout))


_NONE_LEFT = object()


class WorkerTraceback(Exception):
    """Where in the worker a task's exception was raised (its traceback as text), shown under a bug's own."""

    def __str__(self):
        return "\n" + self.args[0]


def serve_tasks(run):
    """The body of a worker module that run_tasks starts: `run(job, task)` for each task it is sent, the
    result (or the exception) sent back; it ends when its stdin closes (no task left)."""
    import pickle
    import traceback
    become_worker()
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the replies
    job = pickle.load(requests)
    while True:
        try:
            task = pickle.load(requests)
        except EOFError:
            return
        _exit_if_orphaned()  # not only PR_SET_PDEATHSIG: no part of a dead parent's work is done
        try:
            reply = (False, run(job, task), None)
        except Exception as error:  # the parent raises it; a library's own exception may not unpickle there
            try:
                pickle.loads(pickle.dumps(error))
            except Exception:
                error = RuntimeError(f"{type(error).__name__}: {error}")
            reply = (True, error, traceback.format_exc())
        pickle.dump(reply, replies)
        replies.flush()


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


def stop_workers(workers, pipes):
    """The workers still running killed, every worker reaped, and its pipes (`pipes(worker)`) closed."""
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
        worker.wait()
        for pipe in pipes(worker):
            try:
                pipe.close()
            except OSError:  # a task still buffered for a dead worker
                pass
