"""The second hostile sweep (issue 23), one test per case, each with the hostile step done for real:
a parent SIGKILLed or SIGTERMed while its workers tokenize, a worker killed, garbage written into a
cache entry, an export while a training run holds the model, a model retrained after its export, a
killed export's temporaries, onnxruntime missing; and the questionable cases, decided."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT, SCRIPT_ENV, data_options, run_script
from test_bad_input import assert_clean_failure
from test_onnx import tiny_checkpoint

from utils.errors import UserError

# --- 1, 2: processes ------------------------------------------------------------------------------------

# A process that does what a trainer does before its first step (holds --model_fn, reads the data, tokenizes
# it in two worker processes) without importing torch: the case is the same, the test seconds shorter.
TOKENIZE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from transformers import AutoTokenizer
    from checkpoint.run_dir import lock_output
    from data_load.encoding import tokenize
    from data_load.readers import SINGLE
    from data_load.sources import file_source, parse
    from utils.errors import exit_on_user_error

    def main():
        lock_output({model!r})
        rows, meta = parse(file_source({data!r}), (None, None, None), {parsed!r}, SINGLE)
        tokenize(rows, meta["key"], {data!r}, AutoTokenizer.from_pretrained({tokenizer!r}), 64, False, workers=2,
                 cache_dir={cache!r})
        print("tokenized", flush=True)
    exit_on_user_error(main)
""")
N_ROWS = 120_000  # long rows: tens of seconds of tokenizing in two workers, killed within the first


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "train.tsv"
    words = "the film was long but the actors were good and the music was even better".split() * 5
    with path.open("w") as f:
        for i in range(N_ROWS):
            f.write(f"{('pos', 'neg')[i % 2]}\t{' '.join(words[i % 7:])} {i}\n")
    return path


def start_tokenizing(tmp_path, big_file, tiny_model):
    # the parsed rows are shared by the tests (parsed once, 3 s); the tokens entry, which a test kills while
    # it is being built, is each test's own
    script = TOKENIZE.format(root=str(ROOT), model=str(tmp_path / "m"), data=str(big_file),
                             parsed=str(big_file.parent / "parsed"), cache=str(tmp_path / "cache"),
                             tokenizer=str(tiny_model))
    # output to a file, as from a terminal: a pipe closed by the parent's death would end the workers by
    # itself (EPIPE), which is not what happens to a user's run
    log_file = (tmp_path / "stderr.txt").open("w")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=log_file, stderr=subprocess.STDOUT, env=SCRIPT_ENV)
    deadline = time.time() + 120
    while time.time() < deadline:  # until the progress bar shows the workers' first rows done
        workers = children(process.pid)
        if len(workers) >= 2 and re.search(r"tokenizing: +\d+%.*?\| *[1-9]\d*/", (tmp_path / "stderr.txt").read_text()):
            return process, workers
        assert process.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
        time.sleep(0.02)
    raise AssertionError("the workers never started")


def children(pid):
    try:
        return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()]
    except FileNotFoundError:
        return []


def alive(pid):
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status  # a zombie waits only for its (new) parent to reap it


def assert_locks_free(tmp_path):
    """Every lock the run held (--model_fn and the cache entries) can be taken at once: a rerun proceeds."""
    from utils.processes import close_lock, open_lock
    locks = [*tmp_path.glob(".m.lock"), *(tmp_path / "cache").rglob(".*.lock")]
    assert locks, "the run took no lock?"
    for path in locks:
        close_lock(open_lock(path, blocking=False))  # BlockingIOError if anything still holds it


@pytest.mark.slow  # a child process tokenizing 120k rows
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_parent_killed_while_tokenizing_leaves_no_orphan_and_no_lock(tmp_path, big_file, tiny_model, sig):
    process, workers = start_tokenizing(tmp_path, big_file, tiny_model)
    process.send_signal(sig)
    process.wait(timeout=30)
    stderr = (tmp_path / "stderr.txt").read_text()
    deadline = time.time() + 1  # they had seconds of work left: only the kernel's PDEATHSIG stops them this soon
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers), "orphaned worker processes"
    assert_locks_free(tmp_path)
    assert not (tmp_path / "m").exists() and not (tmp_path / ".m.partial").exists()
    if sig == signal.SIGTERM:
        assert process.returncode == 143
        assert stderr.strip().splitlines()[-1] == "interrupted: stopped by SIGTERM", stderr[-2000:]
        assert "Traceback" not in stderr
        assert not list((tmp_path / "cache").rglob(".*.tmp-*")), "a half-built cache entry was left behind"


@pytest.mark.slow  # a child process tokenizing 120k rows
def test_a_killed_worker_is_one_line_and_leaves_no_lock(tmp_path, big_file, tiny_model):
    process, workers = start_tokenizing(tmp_path, big_file, tiny_model)
    os.kill(workers[0], signal.SIGKILL)
    process.wait(timeout=60)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 2, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert str(big_file) in errors[0] and f"worker process {workers[0]} was killed by SIGKILL" in errors[0]
    assert not any(alive(pid) for pid in workers)
    assert not list((tmp_path / "cache").rglob(".*.tmp-*")), "a half-built cache entry was left behind"
    assert_locks_free(tmp_path)


# --- 3, 4: damaged cache entries ------------------------------------------------------------------------

def parse_and_tokenize(path, cache, tokenizer):
    from data_load.encoding import tokenize
    from data_load.readers import SINGLE
    from data_load.sources import file_source, parse
    rows, meta = parse(file_source(path), (None, None, None), cache, SINGLE)
    table = tokenize(rows, meta["key"], str(path), tokenizer, 32, False, cache_dir=cache)
    return table.to_dict()


def damage(path, how):
    size = path.stat().st_size
    if how == "garbage":  # the same size: only a checksum tells
        path.write_bytes(os.urandom(size))
    else:
        with path.open("r+b") as f:
            f.truncate(size // 2)


@pytest.mark.parametrize("entry", ["parsed", "tokens"])
@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_a_damaged_cache_entry_is_rebuilt_with_a_warning(tmp_path, tiny_model, entry, how, caplog):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data = tmp_path / "t.tsv"
    data.write_text("".join(f"{('pos', 'neg')[i % 2]}\tsentence number {i}\n" for i in range(300)))
    first = parse_and_tokenize(data, tmp_path / "cache", tokenizer)
    arrow = next((tmp_path / "cache" / entry).glob("*/*.arrow"))
    damage(arrow, how)
    caplog.clear()
    assert parse_and_tokenize(data, tmp_path / "cache", tokenizer) == first
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(arrow.parent) in warnings[0] and "rebuilding it" in warnings[0]
    caplog.clear()
    assert parse_and_tokenize(data, tmp_path / "cache", tokenizer) == first  # rebuilt once, then reused
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_an_unexpected_exception_still_removes_the_partial_directory(tmp_path):
    """A bug (an exception that is not the user's) shows its traceback, but the clean-ups run first."""
    from checkpoint.run_dir import lock_output, start_run
    from utils.errors import _failure_cleanups, exit_on_user_error
    model_fn = tmp_path / "m"

    def main():
        lock_output(model_fn)
        start_run(model_fn, {"run": 1})
        raise IndexError("a bug")
    try:
        with pytest.raises(IndexError):
            exit_on_user_error(main)
        assert not (tmp_path / ".m.partial").exists()
    finally:
        _failure_cleanups.clear()


def test_a_dead_runs_partial_without_state_does_not_block_the_next_run(tmp_path, caplog):
    from checkpoint.run_dir import check_output, lock_output
    from utils.errors import _failure_cleanups
    (tmp_path / ".m.partial" / "runs").mkdir(parents=True)  # a run killed before its first saved state
    try:
        lock_output(tmp_path / "m")
        check_output(tmp_path / "m", resume=False)  # no longer refused
    finally:
        _failure_cleanups.clear()
    assert not (tmp_path / ".m.partial").exists()
    assert "nothing to resume from" in caplog.text


# --- 5, 6: odd label files ------------------------------------------------------------------------------

def load(path, **flags):
    from data_load.splits import load_splits
    return load_splits(data_options(train_fn=str(path), cache_dir=str(path.parent / "cache"), **flags))


def test_multi_label_file_without_any_label_is_one_line(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("label\ttext\n\tgood movie\n\tbad movie\n\tfine\n")
    with pytest.raises(UserError, match="t.tsv: no labels at all"):
        load(path, multi_label=True, text_column="text", label_column="label")


def test_json_list_in_a_tsv_label_field_is_read_as_labels(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text('["positive", "long"]\tgood movie\n["negative"]\tbad one\n["positive"]\tfine\n'
                    '["negative", "long"]\tawful\n' * 3)
    splits = load(path, multi_label=True)
    assert splits.labels == ["long", "negative", "positive"]


@pytest.mark.parametrize("label, message", [('[["positive"]]', "nested list"), ('["positive",]', "not one")])
def test_malformed_json_labels_are_one_line(tmp_path, label, message):
    path = tmp_path / "t.jsonl" if label.startswith("[[") else tmp_path / "t.tsv"
    if path.suffix == ".jsonl":
        path.write_text('{"text": "fine", "label": ["negative"]}\n' + json.dumps({"text": "good", "label": [["positive"]]})
                        + "\n")
    else:
        path.write_text(f'["negative"]\tfine\n{label}\tgood\n')
    with pytest.raises(UserError, match=f"{path.name}:2: .*{message}"):
        load(path, multi_label=True)


# --- 7, 8, 9: export ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny checkpoint and its export (in this process: 3 s instead of 15)."""
    from inference.onnx_export import export
    directory = tiny_checkpoint(tmp_path_factory.mktemp("export") / "model", "bert")
    export(directory, log=lambda message: None)
    return directory


def onnx_classify(model_fn):
    return run_script("classify_plm.py", "--model_fn", model_fn, "--backend", "onnx", stdin="Works perfectly.\n",
                      check=False)


def test_export_refuses_while_a_training_run_holds_the_model(exported):
    from inference.onnx_export import export
    from utils.processes import close_lock, open_lock
    before = {path.name: path.stat().st_mtime_ns for path in exported.iterdir()}
    fd = open_lock(exported.parent / ".model.lock")  # what a training run on --model_fn holds until it commits
    try:
        with pytest.raises(UserError, match="a training run is writing this model now"):
            export(exported)
    finally:
        close_lock(fd)
    assert {path.name: path.stat().st_mtime_ns for path in exported.iterdir()} == before


@pytest.mark.slow  # runs classify_plm.py
def test_onnx_backend_refuses_an_export_older_than_the_model(exported, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file
    model_fn = tmp_path / "model"
    shutil.copytree(exported, model_fn)
    assert onnx_classify(model_fn).returncode == 0
    weights = load_file(model_fn / "model.safetensors")  # trained again after the export: other weights
    name = next(iter(weights))
    weights[name] = weights[name] + 1
    save_file(weights, model_fn / "model.safetensors", metadata={"format": "pt"})
    result = onnx_classify(model_fn)
    assert_clean_failure(result, "model.onnx: exported from other weights", "export_plm.py --model_fn")


def test_a_killed_exports_temporaries_are_removed_by_the_next(exported):
    from inference.onnx_export import export
    stale = [exported / ".model.onnx.tmp", exported / ".model.int8.onnx.tmp"]
    for path in stale:
        path.write_bytes(b"half an export")
    export(exported, log=lambda message: None)
    assert not any(path.exists() for path in stale)
    assert not list(exported.glob(".*.tmp"))


@pytest.mark.parametrize("command, missing", [("classify", "onnxruntime"), ("export", "onnxruntime"),
                                              ("file mode", "onnxruntime"), ("ray", "ray")])
def test_missing_optional_package_is_one_line_before_any_work(exported, command, missing, monkeypatch, tmp_path):
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else find_spec(name, *a))
    flags = {"classify": ["--backend", "onnx"], "export": [],
             "file mode": ["--backend", "onnx", "--input_fn", str(exported / "config.json"), "--output_fn",
                           str(tmp_path / "out")],
             "ray": ["--engine", "ray", "--input_fn", str(exported / "config.json"), "--output_fn", str(tmp_path / "out")],
             }[command]
    monkeypatch.setattr(sys, "argv", ["x", "--model_fn", str(exported), *flags])
    import classify_plm
    import export_plm
    with pytest.raises(UserError, match=f"needs {missing}, which is not installed: pip install"):
        (export_plm if command == "export" else classify_plm).main()
    assert not (tmp_path / "out").exists()


# --- the questionable cases, decided --------------------------------------------------------------------

def test_a_complete_read_only_cache_is_read(tmp_path, monkeypatch):
    """(Root ignores file modes: the read-only cache is a lock that cannot be opened.)"""
    import data_load.cache
    data = tmp_path / "t.tsv"
    data.write_text("pos\tgood\nneg\tbad\n" * 5)
    load(data)

    def read_only(path, blocking=True):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(data_load.cache, "open_lock", read_only)
    assert len(load(data).train) + len(load(data).valid) == 10  # complete entries: read without the lock
    other = tmp_path / "other.tsv"
    other.write_text("pos\tfine\nneg\tworse\n" * 5)
    with pytest.raises(UserError, match="cannot write the data cache"):
        load(other)


def test_an_empty_saved_dataset_is_one_line(tmp_path):
    import datasets
    datasets.Dataset.from_dict({"text": [], "label": []}, features=datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.Value("string")})).save_to_disk(tmp_path / "zero")
    with pytest.raises(UserError, match="zero: the saved dataset has no rows"):
        load(tmp_path / "zero")


@pytest.mark.parametrize("spec, message", [("negative=1,negative=2", "given twice"),
                                           ("1e40,1", "finite and above 0")])
def test_class_weight_duplicates_and_overflow(spec, message, recwarn):
    from training.loss import class_weights
    with pytest.raises(UserError, match=message):
        class_weights(spec, ["negative", "positive"], None)
    assert not recwarn.list, "no NumPy warning beside the error"


def test_too_many_tokenizing_workers_are_capped(caplog):
    from data_load.encoding import capped_workers
    from utils.runtime import usable_cpus
    assert capped_workers(1000, 100_000) == usable_cpus()
    assert "--preprocessing_num_workers 1000: using" in caplog.text
    assert capped_workers(None, 10) == 1


def test_an_endpoint_that_accepts_but_never_answers_is_not_the_hub(monkeypatch):
    import socket

    from utils.hub import hub_reachable
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        started = time.time()
        assert not hub_reachable(timeout=1.0)
        assert time.time() - started < 3


def test_mixed_label_separators_are_warned(tmp_path, caplog):
    path = tmp_path / "t.tsv"
    path.write_text("joy,love\tgreat\nsadness;anger\tbad\njoy\tfine\nanger\tugh\n" * 3)
    load(path, multi_label=True)
    assert "'sadness;anger' contains ';'" in caplog.text


# --- found in review ------------------------------------------------------------------------------------

def test_workers_with_a_relative_cache_dir(tmp_path, tiny_model, monkeypatch):
    """Worker processes run from the repository: a relative --cache_dir must still be this run's."""
    from transformers import AutoTokenizer

    from data_load.encoding import tokenize
    from data_load.readers import SINGLE
    from data_load.sources import file_source, parse
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.tsv").write_text("".join(f"{('pos', 'neg')[i % 2]}\tsentence {i}\n" for i in range(200)))
    rows, meta = parse(file_source("t.tsv"), (None, None, None), "cache", SINGLE)
    table = tokenize(rows, meta["key"], "t.tsv", AutoTokenizer.from_pretrained(tiny_model), 32, False, workers=2,
                     cache_dir="cache")
    assert len(table) == 200 and list(table["length"][:2]) == [4, 4]
    assert list((tmp_path / "cache" / "tokens").glob("*/data-00001.arrow"))


def test_onnx_classifier_without_the_weights_classifies(exported, tmp_path):
    """The torch-free copy the README describes has no model.safetensors: nothing to compare the export with."""
    import shutil

    from conftest import classifier_options
    from inference.onnx_classifier import OnnxClassifier
    copy = tmp_path / "model"
    shutil.copytree(exported, copy, ignore=shutil.ignore_patterns("*.safetensors"))
    prediction = OnnxClassifier(classifier_options(copy, "--backend", "onnx")).predict([("Works perfectly.", None)])
    assert prediction.label_ids[0][0] in (0, 1)


def test_a_headed_row_with_more_fields_than_the_header_is_refused(tmp_path):
    from data_load.readers import read_examples
    path = tmp_path / "t.csv"
    path.write_text("label,text\npos,great\nneg,bad,\npos,great, really great movie\n")
    with pytest.raises(UserError, match=r"t.csv:4: 3 fields, but the first row has 2: a field holds the delimiter"):
        read_examples(path)


def test_delimiter_leaves_jsonl_files_alone(tmp_path):
    from data_load.readers import read_examples
    path = tmp_path / "v.jsonl"
    path.write_text('{"text": "fine", "label": "pos"}\n{"text": "a; b", "label": "neg"}\n')
    assert [e.text for e in read_examples(path, delimiter=";")] == ["fine", "a; b"]


def test_a_failed_atomic_write_leaves_what_was_there(tmp_path):
    """utils.files: every file or directory written whole is in place complete, or the old one stays."""
    from utils.files import atomic_directory, atomic_write
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write("half")
        raise RuntimeError
    with atomic_write(target, per_process=True) as temporary:
        temporary.write_text("new")
    directory = tmp_path / "entry"
    for content in ("first", "second"):  # an earlier directory is replaced only by a complete one
        with atomic_directory(directory) as building:
            (building / "data").write_text(content)
    with pytest.raises(KeyboardInterrupt), atomic_directory(directory) as building:
        (building / "data").write_text("third")
        raise KeyboardInterrupt
    assert target.read_text() == "new" and (directory / "data").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry", "report.json"]
    assert [p.name for p in directory.iterdir()] == ["data"]
