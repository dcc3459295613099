"""Crash, Ctrl-C, resume, atomic replacement and two-process training, on a tiny model built from a config."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, SCRIPT_ENV, run_script

pytestmark = pytest.mark.slow  # runs the real scripts

TRAINERS = ["finetune_plm_native.py", "finetune_plm_hf.py"]
TRAIN_FN = ROOT / "data" / "review.sample.en.tsv"  # 480 lines: 432 train, 48 validation


def train_args(model_fn, tiny_model, *extra):
    return ["--model_fn", model_fn, "--train_fn", TRAIN_FN, "--pretrained_model_name", tiny_model,
            "--batch_size", 8, "--n_epochs", 2, "--lr", "5e-4", *extra]  # 54 steps an epoch


def start(script, args, log):
    return subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=SCRIPT_ENV,
                            stdout=log, stderr=subprocess.STDOUT)


def freeze_at_state(model_fn, min_step, process, timeout=240):
    """Once a complete resumable state at or past min_step exists, stop the run where it is (SIGSTOP), so
    that the signal the test sends next finds it mid-run however fast the machine: the run has dozens of
    steps left when the state appears, and is frozen within ~10 ms of it. Returns the state's step; the
    caller sends its signal and then SIGCONT."""
    resume = model_fn.parent / f".{model_fn.name}.partial" / "resume"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        for state in resume.glob("checkpoint-*"):
            done = (state / "train_state.pt").exists() or (state / "trainer_state.json").exists()
            if done and int(state.name.split("-")[1]) >= min_step:
                process.send_signal(signal.SIGSTOP)
                assert process.poll() is None, "the run ended before it could be interrupted"
                return int(state.name.split("-")[1])
        time.sleep(0.01)
    raise AssertionError("no resumable state appeared")


def result(model_fn):
    record = json.loads((model_fn / "training_args.json").read_text())
    return record["optimizer_steps"], json.loads((model_fn / "metrics.json").read_text())["valid"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model):
    directory = tmp_path_factory.mktemp("uninterrupted")
    runs = {}
    for script in TRAINERS:
        run_script(script, *train_args(directory / script, tiny_model))
        runs[script] = result(directory / script)
    return runs


@pytest.mark.parametrize("script", TRAINERS)
def test_sigkill_mid_epoch_then_resume(tmp_path, tiny_model, uninterrupted, script):
    model_fn = tmp_path / "model"
    with open(tmp_path / "log", "w") as log:
        process = start(script, train_args(model_fn, tiny_model, "--save_every", 20), log)
        step = freeze_at_state(model_fn, 60, process)  # into the second epoch
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert step % 54 != 0 and not model_fn.exists()
    resumed = run_script(script, *train_args(model_fn, tiny_model, "--save_every", 20, "--resume"))
    assert "resuming from" in resumed.stderr
    steps, metrics = result(model_fn)
    expected_steps, expected = uninterrupted[script]
    assert steps == expected_steps == 2 * 54
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"], abs=0.1)
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=0.2)
    assert len(json.loads((model_fn / "history.json").read_text())) == 2
    assert not (tmp_path / ".model.partial").exists()


@pytest.mark.parametrize("script", TRAINERS)
def test_ctrl_c_saves_state_and_resume_finishes(tmp_path, tiny_model, script):
    model_fn = tmp_path / "model"
    with open(tmp_path / "log", "w") as log:
        process = start(script, train_args(model_fn, tiny_model, "--save_every", 10), log)
        freeze_at_state(model_fn, 10, process)
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGCONT)
        assert process.wait(timeout=120) == 130
    output = (tmp_path / "log").read_text()
    assert "state saved; continue with --resume" in output and "Traceback" not in output
    assert not model_fn.exists()
    again = run_script(script, *train_args(model_fn, tiny_model), check=False)
    assert again.returncode == 2 and "add --resume to continue it" in again.stderr
    run_script(script, *train_args(model_fn, tiny_model, "--resume"))
    assert result(model_fn)[0] == 2 * 54


def test_crash_never_replaces_a_finished_model(tmp_path, tiny_model):
    model_fn = tmp_path / "model"
    run_script("finetune_plm_native.py", *train_args(model_fn, tiny_model, "--n_epochs", 1))
    before = (model_fn / "model.safetensors").read_bytes()
    with open(tmp_path / "log", "w") as log:
        process = start("finetune_plm_native.py", train_args(model_fn, tiny_model, "--save_every", 5, "--seed", 1), log)
        freeze_at_state(model_fn, 5, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert (model_fn / "model.safetensors").read_bytes() == before
    from checkpoint.saved_model import load_checkpoint  # the finished model still loads whole (in this process)
    _, model, saved = load_checkpoint(model_fn)
    assert saved.labels == ("negative", "positive") and model.config.num_labels == 2


@pytest.mark.parametrize("script", TRAINERS)
def test_two_processes_on_cpu(tmp_path, tiny_model, script):
    model_fn = tmp_path / "model"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
               str(29400 + os.getpid() % 500 + len(script)), str(ROOT / script),
               *map(str, train_args(model_fn, tiny_model, "--cache_dir", tmp_path / "cache"))]
    run = subprocess.run(command, cwd=ROOT, env={**SCRIPT_ENV, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((model_fn / "training_args.json").read_text())
    assert record["world_size"] == 2
    assert record["optimizer_steps"] == 2 * 27  # 54 batches an epoch, split over two processes
    assert run.stdout.count("valid_accuracy") == 1  # only rank 0 prints the history table
    # one process tokenizes the training file, the other waits and reads what it wrote; only rank 0 logs
    # below errors, so its one line says which it was (no ^ anchor: the other process's progress bars can
    # share the line, as they did on a CI run), and the cache holds one entry of token ids
    notes = re.findall(r"tokenizing [\d,]+ examples of|reusing tokenized", run.stderr)
    assert len(notes) == 1, run.stderr[-3000:]
    assert len([entry for entry in (tmp_path / "cache" / "tokens").iterdir() if not entry.name.startswith(".")]) == 1
    metrics = json.loads((model_fn / "metrics.json").read_text())["valid"]
    assert metrics["n_examples"] == 48  # gathered from both processes, each example once
    out = run_script("classify_plm.py", "--model_fn", model_fn, stdin="it broke\nlove it\n").stdout.splitlines()
    assert [line.split("\t")[1] for line in out] == ["it broke", "love it"]
