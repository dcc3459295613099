"""`classify_plm.py --engine ray`: the shards of a file-mode job (batch/job.py) classified by Ray actors.

The driver plans the shards and keeps the manifest, as with the local engine; `--num_workers` Ray actors
(each loading the model once, with its own intra-op threads) take the pending shards one at a time, the
next shard going to whichever actor is free. Each actor reads its shard with the project's readers,
classifies it and writes its part file under a temporary name, renamed when complete. Ray Data's
read_parquet/write_parquet are not used: they name output files at random, so a retried task could
leave a duplicate; a part file named by its shard is rewritten whole by a retry, which keeps the output
exactly once. When an actor dies, Ray restarts it and retries its shard (max_restarts=-1,
max_task_retries=-1, what Ray Data's actor pool, used before, sets). Plain actors rather than a Ray Data
pipeline: the same work, and 2.3 s less from start to the first shard (Ray Data's import and executor;
docs/benchmarks.md).

On a cluster, every node needs this checkout and its environment at the same path, and the inputs,
the model and --output_fn on a filesystem all nodes share (NFS, a mounted bucket): README "Classify a
corpus"."""
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from batch.shard_work import classify_shard, load_worker_classifier
from utils.errors import UserError, first_line
from utils.log import log
from utils.runtime import usable_cpus, worker_threads

ROOT = Path(__file__).resolve().parents[1]
CONNECT_TIMEOUT_S = 5  # an unreachable --ray_address fails within this, not after ray.init's minutes of retries


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray, which is not installed: pip install -r requirements/ray.txt "
                        "(ray==2.60.0), or use the default --engine local") from None
    return ray


# Ray's C++ core prints notices at error level that ask nothing of the user (an actor with max_restarts > 0
# gets "has constructor arguments in the object store"); real failures still reach the driver as exceptions.
# RAY_BACKEND_LOG_LEVEL=info (or warning) brings them back.
os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")


# A local cluster's object store holds the shards' descriptions and their counts (bytes each), not texts:
# the default (30% of the memory) only made Ray reserve what it never used.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20
# What a local cluster leaves out, being one job's on one machine: the metrics exporter and the timeline
# (no dashboard or Prometheus reads them) and usage reports; docs/benchmarks.md has the start-up and rate.
LOCAL_SYSTEM_CONFIG = {"enable_metrics_collection": False, "enable_timeline": False}
CLUSTER_PROCESSES = ("gcs_server", "raylet")  # a local cluster's own, watched while the job runs (_check_alive)
CLUSTER_CHECK_S = 1.0


def connect(ray, address):
    """Join the cluster at `address`, or start a local one sized to this machine. Returns whether this
    run started it (and so shuts it down)."""
    worker_env = {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    options = dict(logging_level=logging.ERROR, log_to_driver=False)
    if address and address != "auto":
        host, _, port = address.rpartition(":")
        if not host.split("://")[-1] or not port.isdigit():
            raise UserError(f"--ray_address {address}: expected host:port, e.g. 10.0.0.1:6379 (what `ray start --head` "
                            "prints), or auto")
        try:
            socket.create_connection((host.split("://")[-1], int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as error:
            raise UserError(f"--ray_address {address}: no Ray cluster answers there ({error.strerror or 'timed out'}): "
                            "start one with `ray start --head` on that machine, or leave out --ray_address for "
                            "a local cluster") from None
    try:
        if address:
            with _quiet_stderr():  # Ray's C++ client prints a line a second while it retries
                ray.init(address=address, runtime_env={"env_vars": worker_env}, **options)
            return False
        # A local cluster's workers inherit this process's environment (this is the Ray driver child,
        # whose environment is its own): with no runtime_env, the workers Ray starts ahead with the driver
        # host the actors, instead of new ones made after the runtime-env agent has prepared their env.
        os.environ.update(worker_env)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=usable_cpus(), include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 _system_config=LOCAL_SYSTEM_CONFIG, **options)
        return True
    except (ConnectionError, RuntimeError, TimeoutError) as error:
        raise UserError(f"--ray_address {address}: cannot join the Ray cluster ({first_line(error)}): is a Ray "
                        f"{ray.__version__} head running there (`ray start --head`)?") from None


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null while the block runs (Ray's C++ code writes to it directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _auth_token_found():
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


class ShardClassifier:
    """One actor: the model loaded once, then whole shards, one a call."""

    def __init__(self, job, threads):
        os.environ["OMP_NUM_THREADS"] = str(threads)  # onnxruntime's session and torch read it (load_session)
        self.job = job
        self.classifier, self.error = None, None
        try:
            self.classifier = load_worker_classifier(job)
        except UserError as error:
            # raised by the first call instead: Ray reports a constructor's exception as the actor's death, with
            # the traceback as its only text, where a call's exception reaches the driver as itself (_user_error)
            self.error = error

    def classify(self, shard):
        """shard: data_load.shards.Shard; its counts, as batch.shard_work.classify_shard returns them."""
        if self.error is not None:
            raise self.error
        return classify_shard(self.job, shard, self.classifier)


def classify_on_ray(job, pending, num_workers, address, finished):
    """The pending shards classified on Ray, `finished(result, shard)` called as each is written.

    Ray runs in a child process, the Ray driver, which this one (the job's driver: its lock, manifest and
    progress) watches through a pipe. Ray's C++ core ends the process it runs in at once when the raylet
    it talks to dies (exit status 1: no Python clean-up, not a word on stderr); in a child, that death is
    this process's to report, in one line, with the finished shards kept for the rerun."""
    import multiprocessing
    by_index = {shard.index: shard for shard in pending}
    # spawn, not fork: this process may hold onnxruntime's or torch's thread pools (batch/local_engine.py)
    context = multiprocessing.get_context("spawn")
    receiving, sending = context.Pipe(duplex=False)
    child = context.Process(target=_ray_driver, args=(job, pending, num_workers, address, sending, os.getpid()),
                            name="ray-driver")
    child.start()
    sending.close()  # the child holds the only sending end: the pipe ends when the child does
    error = None
    try:
        while True:
            try:
                kind, value = receiving.recv()
            except EOFError:
                break
            if kind == "shard":
                index, result = value
                finished(result, by_index[index])
            elif kind == "error":
                error = value
    except BaseException:  # Ctrl-C (the child ignores it) or SIGTERM: the child shuts Ray down and ends
        child.terminate()
        raise
    finally:
        receiving.close()
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
            child.join()
    if error is not None:
        raise UserError(error)
    if child.exitcode != 0:
        how = (f"was killed by {signal.Signals(-child.exitcode).name}" if child.exitcode < 0
               else f"ended with exit status {child.exitcode}")
        raise UserError(f"the Ray job stopped: its Ray driver process {how} before the job was done (Ray ends it "
                        "so, without a word, when a Ray process it talks to dies: the raylet or the GCS, killed or "
                        "out of memory)")


def _ray_driver(job, pending, num_workers, address, sending, parent):
    """The child process of classify_on_ray: joins or starts the cluster, runs the job, sends each finished shard
    (or the one-line error) up the pipe."""
    import threading

    from utils.log import setup_logging
    from utils.processes import die_with_parent
    # our log lines go through tqdm.write, whose default lock is a multiprocessing semaphore: one in a process
    # that Ray ends at once leaks, and the parent's exit warns about it
    try:
        import tqdm
        tqdm.tqdm.set_lock(threading.RLock())
    except ImportError:  # the torch-free install has no tqdm
        pass
    setup_logging(rank=0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    signal.signal(signal.SIGTERM, _interrupt)  # the parent stopping us: Ray is shut down on the way out
    # SIGTERM, not a worker's SIGKILL, when the job's driver dies (even by SIGKILL): Ray is shut down on the
    # way out, the local cluster it started with it (the raylet's agents otherwise lingered 1-2 minutes)
    die_with_parent(parent, signal.SIGTERM)
    try:
        _run(job, pending, num_workers, address, lambda index, result: sending.send(("shard", (index, result))))
    except UserError as error:
        sending.send(("error", str(error)))
    except KeyboardInterrupt:
        pass
    finally:
        sending.close()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _run(job, pending, num_workers, address, finished):
    if address and "RAY_AUTH_MODE" not in os.environ and _auth_token_found():
        # `ray start --head` (Ray 2.60) turns on token authentication and writes the token to
        # ~/.ray/auth_token, but a driver's ray.init leaves it off and is refused ("InvalidAuthToken");
        # ray reads this when imported
        os.environ["RAY_AUTH_MODE"] = "token"
    if address:
        # a driver retries joining once a second, 20 times by default: an address that answers but is no
        # Ray head (a proxy, another service) would take 20 s to refuse
        os.environ.setdefault("RAY_NUM_REDIS_GET_RETRIES", "4")
    ray = import_ray()
    started = connect(ray, address)
    if started:
        _start_reaper()
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        # each actor reserves its share of the cluster's CPUs (all fit at once), and runs that many
        # intra-op threads unless OMP_NUM_THREADS says otherwise
        per_actor = max(1, cpus // num_workers) if num_workers else 1
        num_workers = num_workers or cpus
        threads = worker_threads(num_workers, cpus)
        log.info(f"Ray: {cpus} CPUs in the cluster, {num_workers} actors of {threads} thread(s), "
                 f"{len(pending)} shards")
        if not pending:
            return
        actor_class = ray.remote(num_cpus=per_actor, max_restarts=-1, max_task_retries=-1)(ShardClassifier)
        actors = [actor_class.remote(job, threads) for _ in range(min(num_workers, len(pending)))]
        queue = list(reversed(pending))  # popped from the end: the first shard first
        # one shard an actor and none queued behind a busy one: shards take minutes, so a free actor
        # should take the next one
        running = {actor.classify.remote(queue.pop()): actor for actor in actors}
        cluster = _cluster_processes() if started else []
        while running:
            done, _ = ray.wait(list(running), num_returns=1, timeout=CLUSTER_CHECK_S)
            _check_alive(cluster)
            if not done:
                continue
            actor = running.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as error:
                user_error = _user_error(error)
                if user_error is not None:
                    raise user_error from None
                raise UserError(f"the Ray job failed: {first_line(error)}") from None
            finished(result["shard"], {key: result[key] for key in ("rows", "empty")})
            if queue:
                running[actor.classify.remote(queue.pop())] = actor
    finally:
        if started:
            shut_down_all_of_ray(ray)


def _cluster_processes():
    """The GCS and raylet of the local cluster this process started."""
    import psutil
    return [process for process in psutil.Process().children(recursive=True)
            if process.name() in CLUSTER_PROCESSES]


def _check_alive(processes):
    """Actors call each other directly: with its raylet killed, a job on a local cluster went on (and ended with
    exit 0), with nothing left to restart an actor that died or to stop the workers. A dead GCS or raylet stops
    the job instead, the finished shards kept."""
    import psutil
    for process in processes:
        if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
            raise UserError(f"the Ray job stopped: the local Ray cluster's {process.name()} process (pid {process.pid}) "
                            "died (killed, or out of memory)")


# The reaper: a process that notes this process's descendants (the local cluster) while it lives, and SIGKILLs
# those still running once it has ended, however it ended (shut_down_all_of_ray kills them too, when it gets to)
REAPER = """
import sys, time
import psutil
owner, me, known = psutil.Process(int(sys.argv[1])), psutil.Process(), {}
while owner.is_running() and owner.status() != psutil.STATUS_ZOMBIE:
    try:
        known.update((p.pid, p) for p in owner.children(recursive=True) if p.pid != me.pid)
    except psutil.Error:
        pass
    time.sleep(0.5)
time.sleep(2)  # the owner's own shutdown
for process in known.values():
    try:
        if process.is_running():  # the same process: psutil compares its start time too
            process.kill()
    except psutil.Error:
        pass
"""


def _start_reaper():
    """A killed driver's local cluster lingered: a fresh-clone CI run once found the dashboard and runtime-env
    agents alive 30 s after SIGKILL of classify_plm.py, which its Ray child should have killed on its way out."""
    import subprocess
    subprocess.Popen([sys.executable, "-c", REAPER, str(os.getpid())], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def shut_down_all_of_ray(ray):
    """ray.shutdown(), then SIGKILL to whatever of the cluster this process started outlived it: the dashboard and
    runtime-env agents that the raylet starts ignore SIGTERM, and a job that ended while they started left both
    running for minutes (a killed driver, in a fresh-clone CI run). Taken before the shutdown: once the raylet is
    gone they are no longer this process's descendants."""
    import psutil
    started = psutil.Process().children(recursive=True)
    ray.shutdown()
    _, alive = psutil.wait_procs(started, timeout=2)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def _user_error(error, seen=None):
    """The UserError (a bad row, an unreadable file) an actor raised, under Ray's wrappers."""
    seen = seen or set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error) is UserError:  # not Ray's RayTaskError(UserError), whose text is a traceback
            return UserError(str(error))
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            found = _user_error(cause, seen)
            if found:
                return found
        error = error.__cause__ or error.__context__
    return None
