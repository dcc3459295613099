"""classify_plm.py --engine ray (batch/ray_engine.py) on a local 2-CPU Ray cluster, started once for
the file (`ray start --head --block`, stopped by its process group at the end): a complete output, equal
to the local engine's, when an actor is killed midway."""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT, SCRIPT_ENV, run_script
from test_bad_input import assert_clean_failure
from test_classify_files import classify_files, read_output, varied_checkpoint
from test_onnx import REVIEWS

pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a Ray cluster and real scripts


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(port),
                             "--num-cpus", "2", "--include-dashboard", "false",
                             "--disable-usage-stats", "--temp-dir", temp_dir],
                            env={**SCRIPT_ENV, "RAY_USAGE_STATS_ENABLED": "0"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, "ray start --head failed"
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        # the head, its raylet and GCS, and the workers (some in sessions of their own): the processes this
        # head started, by id, never `ray stop`, which stops every Ray on the machine. SIGTERM to the head
        # took 20 s and ended nothing, so SIGKILL
        import psutil
        started = psutil.Process(head.pid).children(recursive=True)
        os.killpg(head.pid, signal.SIGKILL)
        for process in started:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        head.wait()
        import shutil
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return varied_checkpoint(tmp_path_factory.mktemp("ray_model") / "tiny")


def test_ray_engine_writes_what_the_local_engine_writes_even_when_an_actor_is_killed(cluster, model, tmp_path,
                                                                                      monkeypatch):
    """One Ray job (the cluster's start dominates a test's time), with an actor SIGKILLed midway: Ray
    retries its shard, and the output is complete and equal to the local engine's, kept columns and
    probabilities included."""
    import psutil
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("".join(f"pos\t{text}\n" for text in REVIEWS * 8))  # 3,840 rows, 32 shards
    out = tmp_path / "ray"
    flags = ["--shard_size", "120", "--with_prob", "--keep_columns"]
    process = subprocess.Popen([sys.executable, str(ROOT / "classify_plm.py"), "--model_fn", str(model), "--input_fn",
                                str(corpus), "--output_fn", str(out), "--engine", "ray", "--ray_address", cluster,
                                "--num_workers", "2", *flags],
                               cwd=ROOT, env={**SCRIPT_ENV, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not list(out.glob("part-*")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    actors = [p for p in psutil.process_iter(["pid", "cmdline"])
              if "ShardClassifier" in " ".join(p.info["cmdline"] or [])]
    done_at_kill = len(list(out.glob("part-*")))
    assert actors and done_at_kill < 32, f"{len(actors)} actors found, {done_at_kill} of 32 shards done"
    actors[0].send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert "Ray: 2 CPUs in the cluster, 2 actors of 1 thread(s), 32 shards" in stderr
    rows = read_output(out)
    assert [row["line"] for row in rows] == list(range(1, 3_841)), "every row once, in order"
    local = classify_files(monkeypatch, model, corpus, tmp_path / "local", *flags)
    assert [row["label"] for row in rows] == [row["label"] for row in local]
    assert [row["text"] for row in rows] == [row["text"] for row in local]
    assert [row["score"] for row in rows] == pytest.approx([row["score"] for row in local], abs=1e-5)
    assert (out / "_SUCCESS").exists() and not list(out.glob(".part-*")), "the killed actor's part was cleaned up"


def test_a_bad_row_read_by_an_actor_is_one_line_and_the_finished_shards_stay(cluster, model, tmp_path):
    """The actor's UserError reaches the user as the local engine's line, not as Ray's wrapped traceback."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(f'{{"text": "{text}"}}\n' for text in REVIEWS[:250]) + "{not json\n")
    out = tmp_path / "out"
    failed = run_script("classify_plm.py", "--model_fn", model, "--input_fn", bad, "--output_fn", out,
                        "--shard_size", 100, "--engine", "ray", "--ray_address", cluster, "--num_workers", 1,
                        check=False)
    assert_clean_failure(failed, "bad.jsonl:251: invalid JSON", "the 2 finished shard(s) of 3 are kept")
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet", "part-00001.parquet"]


def test_a_model_the_actors_cannot_load_is_one_line_and_leaves_nothing(cluster, model, tmp_path):
    """A truncated weights file, read first by the actors: Ray reports an actor constructor's exception as the
    actor's death, its text a traceback; the actors now raise it from their first shard, as the user's line."""
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(REVIEWS[:10]) + "\n")
    failed = run_script("classify_plm.py", "--model_fn", broken, "--input_fn", corpus, "--output_fn", tmp_path / "out",
                        "--engine", "ray", "--ray_address", cluster, "--num_workers", 1, check=False)
    assert_clean_failure(failed, f"{broken}: cannot load the checkpoint (truncated or corrupt file?)")
    assert not (tmp_path / "out").exists()


def test_raylet_killed_mid_job_is_one_line_and_the_finished_shards_stay(model, tmp_path):
    """The raylet of the local cluster the command starts, SIGKILLed once a shard is written: Ray's C++ core
    ended the driver at once, exit status 1 and nothing on stderr (with Ray Data); Ray's actors then went on
    without it, with nothing left to restart one that died. Now one line and exit code 2 (the
    driver watches the cluster's processes), the finished shards kept for the rerun, and none of the run's
    processes left."""
    import psutil
    corpus = tmp_path / "corpus.txt"
    # 19,200 lines, 320 shards (about 14 s of work): 3,840 were done within a second of the first part file
    corpus.write_text("\n".join(REVIEWS * 40) + "\n")
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, str(ROOT / "classify_plm.py"), "--model_fn", str(model), "--input_fn",
                                str(corpus), "--output_fn", str(out), "--engine", "ray", "--num_workers", "2",
                                "--shard_size", "60"], cwd=ROOT, env={**SCRIPT_ENV, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not list(out.glob("part-*")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    started = psutil.Process(process.pid).children(recursive=True)
    (raylet,) = [p for p in started if "raylet" in " ".join(p.cmdline())]
    raylet.kill()
    _, stderr = process.communicate(timeout=120)
    done = len(list(out.glob("part-*")))
    assert process.returncode == 2, stderr[-3000:]
    # which comes first is a race: the driver seeing the raylet gone, Ray's C++ core ending the Ray driver, or
    # its Python side raising
    last = stderr.splitlines()[-1]
    assert last.startswith(("error: the Ray job stopped: the local Ray cluster's raylet process (pid ",
                            "error: the Ray job stopped: its Ray driver process ended with exit status 1 before the "
                            "job was done (Ray ends it so, without a word, when a Ray process it talks to dies: the "
                            "raylet or the GCS", "error: the Ray job failed: ")), stderr[-3000:]
    assert last.endswith(f"; the {done} finished shard(s) of 320 are kept in {out}: rerun the same command to classify "
                         "the rest"), stderr[-3000:]
    assert 0 < done < 320 and not (out / "_SUCCESS").exists()
    psutil.wait_procs(started, timeout=30)
    assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_a_killed_driver_leaves_no_ray_process(model, tmp_path):
    """Decided: SIGKILL of classify_plm.py mid-job takes the local cluster it started with it. Its Ray driver (a
    child process) gets SIGTERM from the kernel and shuts Ray down, and a reaper process kills what is left once
    that child has ended, however it ended; before, the raylet's agents lingered 1-2 minutes."""
    import psutil
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(REVIEWS * 40) + "\n")  # 320 shards: still running when killed
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, str(ROOT / "classify_plm.py"), "--model_fn", str(model), "--input_fn",
                                str(corpus), "--output_fn", str(out), "--engine", "ray", "--num_workers", "2",
                                "--shard_size", "60"], cwd=ROOT, env={**SCRIPT_ENV, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not list(out.glob("part-*")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    started = psutil.Process(process.pid).children(recursive=True)
    assert any("raylet" in " ".join(p.cmdline()) for p in started)
    # the worst case: the Ray child killed too, so that no clean-up code of ours runs (a fresh-clone CI run found
    # the two agents alive 30 s after the driver alone was killed): the reaper kills what is left
    for child in psutil.Process(process.pid).children():
        if "python" in child.name():
            child.kill()
    process.kill()
    process.wait()
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], [p.cmdline()[:2] for p in alive]
