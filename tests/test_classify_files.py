"""classify_plm.py's file mode (--input_fn/--output_fn, batch/job.py) on the local engine: every
input kind against stdin mode, resume after SIGKILL, refusals, bad input. A tiny 2-layer BERT with a
seeded head (tests/test_onnx.py) on the torch backend; most runs are in-process."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, SCRIPT_ENV, run_script
from test_bad_input import assert_clean_failure
from test_onnx import REVIEWS, tiny_checkpoint

import classify_plm
from utils.errors import UserError

TEXTS = REVIEWS[:300]


def varied_checkpoint(directory):
    """The tiny BERT of tests/test_onnx.py with its head scaled and centred on REVIEWS: a random 2-layer
    encoder gives every sentence nearly the same logits (label margins of 0.004, all `positive`); scaled
    100x and centred, the labels split about half and half with margins far above batching noise."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from test_onnx import write_checkpoint
    tiny_checkpoint(directory, "bert")
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    with torch.no_grad():
        model.classifier.weight.mul_(100)
        batch = tokenizer(REVIEWS, padding=True, truncation=True, max_length=64, return_tensors="pt")
        logits = model(**batch).logits
        margin = (logits[:, 1] - logits[:, 0]).median()
        model.classifier.bias += torch.tensor([margin / 2, -margin / 2])
    return write_checkpoint(directory, model, tokenizer, ["negative", "positive"])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return varied_checkpoint(tmp_path_factory.mktemp("files") / "tiny")


@pytest.fixture(scope="module")
def stdin_labels(model):
    """What the stdin filter prints for TEXTS: (label, score) a line."""
    result = run_script("classify_plm.py", "--model_fn", model, "--with_prob", stdin="\n".join(TEXTS) + "\n")
    return [(line.split("\t")[0], float(line.split("\t")[1])) for line in result.stdout.splitlines()]


def classify_files(monkeypatch, model, input_fn, output_fn, *flags):
    """classify_plm.py in this process (one worker); returns the output as a list of row dicts."""
    monkeypatch.setattr(sys, "argv", ["classify_plm.py", "--model_fn", str(model), "--input_fn", str(input_fn),
                                      "--output_fn", str(output_fn), "--num_workers", "1", *map(str, flags)])
    classify_plm.main()
    return read_output(output_fn)


def read_output(output_fn):
    import pyarrow.parquet as pq
    parts = sorted(output_fn.glob("part-*"))
    if parts and parts[0].suffix == ".jsonl":
        return [json.loads(line) for part in parts for line in part.read_text().splitlines()]
    return [row for part in parts for row in pq.read_table(part).to_pylist()]


def assert_like_stdin(rows, stdin_labels):
    assert [row["label"] for row in rows] == [label for label, _ in stdin_labels]
    assert [row["score"] for row in rows] == pytest.approx([score for _, score in stdin_labels], abs=1e-4)
    assert len({row["label"] for row in rows}) > 1, "the comparison needs varied predictions"


def write_inputs(directory):
    """TEXTS as every input kind; each holds the texts in order, with something a reader must get right."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    directory.mkdir()
    (directory / "lines.txt").write_text("\n".join(TEXTS[:150]) + "\n\n" + "\n".join(TEXTS[150:]) + "\n")
    (directory / "table.tsv").write_text("id\ttext\tlabel\n" + "".join(
        f"{i}\t{text}\tgold{i % 2}\n" for i, text in enumerate(TEXTS)))
    csv_rows = [f'{i},"{text.replace(chr(34), chr(34) * 2)}"\n' for i, text in enumerate(TEXTS)]
    csv_rows[5] = '5,"' + TEXTS[5].replace(" ", "\n", 1) + '"\n'  # a quoted field across two lines
    (directory / "table.csv").write_text("id,review\n" + "".join(csv_rows))
    (directory / "table.jsonl").write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(TEXTS)))
    pq.write_table(pa.table({"id": list(range(len(TEXTS))), "sentence": TEXTS}), directory / "table.parquet",
                   row_group_size=70)  # shards of 100 rows cross row groups
    (directory / "reference.tsv").write_text("".join(f"pos\t{text}\n" for text in TEXTS))
    return directory


def test_every_input_kind_matches_stdin_mode(model, stdin_labels, tmp_path, monkeypatch):
    inputs = write_inputs(tmp_path / "in")
    expected_lines = {"lines.txt": [*range(1, 151), *range(152, 302)], "table.tsv": list(range(2, 302)),
                      "table.jsonl": list(range(1, 301)), "table.parquet": list(range(1, 301)),
                      "reference.tsv": list(range(1, 301))}
    for name, flags in {"lines.txt": [], "table.tsv": ["--text_column", "text"], "table.csv": ["--text_column", "review"],
                        "table.jsonl": [], "table.parquet": [], "reference.tsv": []}.items():
        rows = classify_files(monkeypatch, model, inputs / name, tmp_path / f"out_{name}", "--shard_size", 100,
                              "--chunk_size", 64, *flags)
        assert_like_stdin(rows, stdin_labels)
        assert sorted(rows[0]) == ["label", "line", "score"], name  # one input: no `source` column
        if name in expected_lines:
            assert [row["line"] for row in rows] == expected_lines[name], name
        else:  # CSV: a row's first line; the row after the two-line one starts a line later
            assert [row["line"] for row in rows][4:8] == [6, 7, 9, 10]
        assert (tmp_path / f"out_{name}" / "_SUCCESS").exists()
    manifest = json.loads((tmp_path / "out_table.parquet" / "_manifest.json").read_text())
    assert len(manifest["shards"]) == 3 and manifest["inputs"][0]["kind"] == "parquet"

    # a glob, and a directory: every file in name order, each row naming its source
    rows = classify_files(monkeypatch, model, inputs / "table.[cjp]*", tmp_path / "out_glob", "--shard_size", 1000)
    sources = [row["source"] for row in rows]
    assert sources == sorted(sources) and len(rows) == 3 * len(TEXTS)
    assert [s.rsplit("/", 1)[1] for s in dict.fromkeys(sources)] == ["table.csv", "table.jsonl", "table.parquet"]
    assert [row["label"] for row in rows if row["source"].endswith("table.jsonl")] == [l for l, _ in stdin_labels]
    (inputs / "sub").mkdir()
    for name in ("lines.txt", "reference.tsv"):
        (inputs / "sub" / name).write_bytes((inputs / name).read_bytes())
    rows = classify_files(monkeypatch, model, inputs / "sub", tmp_path / "out_dir")
    assert [row["label"] for row in rows] == [label for label, _ in stdin_labels] * 2


def test_output_columns(model, stdin_labels, tmp_path, monkeypatch):
    inputs = write_inputs(tmp_path / "in")
    rows = classify_files(monkeypatch, model, inputs / "table.tsv", tmp_path / "out", "--text_column", "text",
                          "--with_prob", "--keep_columns", "--shard_size", 128)
    assert list(rows[0]) == ["line", "label", "score", "probabilities", "id", "text", "input_label"]
    assert [row["text"] for row in rows] == TEXTS and rows[3]["input_label"] == "gold1" and rows[3]["id"] == "3"
    for row in rows:
        assert set(row["probabilities"]) == {"negative", "positive"}
        assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert row["probabilities"][row["label"]] == pytest.approx(row["score"])
    as_jsonl = classify_files(monkeypatch, model, inputs / "table.tsv", tmp_path / "out_jsonl", "--text_column", "text",
                              "--with_prob", "--keep_columns", "--output_format", "jsonl", "--shard_size", 128)
    assert [row["label"] for row in as_jsonl] == [row["label"] for row in rows]
    assert sorted(p.name for p in (tmp_path / "out_jsonl").glob("part-*")) == [
        "part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl"]
    top = classify_files(monkeypatch, model, inputs / "lines.txt", tmp_path / "out_top", "--top_k", 2)
    assert all(len(row["label"]) == 2 and row["score"][0] >= row["score"][1] for row in top)


def test_rerun_refuses_what_changed(model, tmp_path, monkeypatch):
    inputs = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    first = classify_files(monkeypatch, model, inputs / "lines.txt", out, "--shard_size", 100)
    mtime = (out / "part-00000.parquet").stat().st_mtime_ns
    assert classify_files(monkeypatch, model, inputs / "lines.txt", out, "--shard_size", 100) == first  # nothing to redo
    assert (out / "part-00000.parquet").stat().st_mtime_ns == mtime

    other = tiny_checkpoint(tmp_path / "other", "roberta")
    with pytest.raises(UserError, match="with another model, .*tiny"):
        classify_files(monkeypatch, other, inputs / "lines.txt", out, "--shard_size", 100)
    with pytest.raises(UserError, match="--with_prob False"):
        classify_files(monkeypatch, model, inputs / "lines.txt", out, "--shard_size", 100, "--with_prob")
    with (inputs / "lines.txt").open("a") as f:
        f.write("one more line\n")
    with pytest.raises(UserError, match=r"another version of .*lines\.txt"):
        classify_files(monkeypatch, model, inputs / "lines.txt", out, "--shard_size", 100)

    from utils.processes import close_lock, open_lock
    fd = open_lock(out / ".lock")  # what a run writing there holds (utils.processes, as every lock)
    try:
        with pytest.raises(UserError, match="another classify_plm.py run is writing there now"):
            classify_files(monkeypatch, model, inputs / "lines.txt", out, "--shard_size", 100)
    finally:
        close_lock(fd)
    rows = classify_files(monkeypatch, model, inputs / "lines.txt", out, "--shard_size", 100, "--overwrite")
    assert len(rows) == len(first) + 1 and [(r["line"], r["label"]) for r in rows[:-1]] == [
        (r["line"], r["label"]) for r in first]  # scores may move by 1e-6: the last shard is batched with one more line

    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not the output of classify_plm.py"):
        classify_files(monkeypatch, model, inputs / "lines.txt", tmp_path / "foreign", "--overwrite")
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_output_inside_the_input_directory_is_not_read_back(model, tmp_path, monkeypatch):
    """--input_fn DIR --output_fn DIR/out: an interrupted run (a part file missing, no _SUCCESS) is finished
    by the same command, and --overwrite starts over, both reading DIR without the part files in DIR/out
    (they were refused as "it holds the input"). An input inside the output is still refused."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n".join(TEXTS[:150]) + "\n")
    (corpus / "b.txt").write_text("\n".join(TEXTS[150:]) + "\n")
    out = corpus / "out"
    first = classify_files(monkeypatch, model, corpus, out, "--shard_size", 100)
    (out / "part-00001.parquet").unlink()  # what an interrupted run leaves: the other shards, the manifest
    (out / "_SUCCESS").unlink()
    assert classify_files(monkeypatch, model, corpus, out, "--shard_size", 100) == first
    assert classify_files(monkeypatch, model, corpus, out, "--shard_size", 100, "--overwrite") == first
    assert [row["source"] for row in first].count(str(corpus / "a.txt")) == 150 and len(first) == len(TEXTS)
    with pytest.raises(UserError, match=r"--output_fn .*out: it holds the input \(.*part-00000.parquet\)"):
        classify_files(monkeypatch, model, out / "part-00000.parquet", out)


def test_a_lone_cr_ends_a_line_on_stdin_as_in_file_mode(model, tmp_path, monkeypatch):
    """Decided: a lone \\r ends a line everywhere (file mode and the training readers read universal newlines;
    stdin split at \\n only, so the same bytes were 4 texts in a file and 3 on stdin)."""
    import io
    data = b"first\rsecond\r\nthird\n\rfourth\n"
    (tmp_path / "in.txt").write_bytes(data)
    rows = classify_files(monkeypatch, model, tmp_path / "in.txt", tmp_path / "out", "--keep_columns")
    assert [(row["line"], row["text"]) for row in rows] == [(1, "first"), (2, "second"), (3, "third"), (5, "fourth")]
    assert list(classify_plm.read_lines(io.BytesIO(data))) == ["first", "second", "third", "fourth"]


def test_more_workers_than_cores_are_capped_with_a_note(model, tmp_path, monkeypatch, capsys):
    """Decided: --num_workers above the cores runs one process per core, with a note (64 processes on 2 cores
    ran 6x slower, each with its own model), as training caps its tokenizing workers."""
    from utils.runtime import usable_cpus
    (tmp_path / "in.txt").write_text("\n".join(TEXTS[:20]) + "\n")
    classify_files(monkeypatch, model, tmp_path / "in.txt", tmp_path / "out", "--num_workers", 64)
    cores = usable_cpus()
    assert (f"note: --num_workers 64 is more than the {cores} cores here: {cores} worker processes"
            in capsys.readouterr().err)


@pytest.mark.slow  # runs the real script, killed midway, in subprocesses
def test_resume_after_sigkill(model, tmp_path, monkeypatch):
    """Two worker processes, SIGKILLed (the whole process group) once some shards are written; the same
    command again does the rest: the result equals an uninterrupted run, no row lost or doubled."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(REVIEWS * 8) + "\n")  # 3,840 lines, 32 shards
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "classify_plm.py"), "--model_fn", str(model), "--input_fn", str(corpus),
               "--output_fn", str(out), "--shard_size", "120", "--num_workers", "2"]
    process = subprocess.Popen(command, cwd=ROOT, env={**SCRIPT_ENV, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(out.glob("part-*")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = len(list(out.glob("part-*")))
    assert 0 < done < 32, f"the kill should land midway ({done} of 32 shards were written)"
    assert not (out / "_SUCCESS").exists()

    resumed = run_script("classify_plm.py", *command[2:])
    assert f"{done} of 32 shards already classified" in resumed.stderr
    assert not list(out.glob(".part-*"))
    whole = classify_files(monkeypatch, model, corpus, tmp_path / "whole", "--shard_size", 120)
    rows = read_output(out)
    assert [row["line"] for row in rows] == list(range(1, 3_841))
    assert [row["label"] for row in rows] == [row["label"] for row in whole]
    assert [row["score"] for row in rows] == pytest.approx([row["score"] for row in whole], abs=1e-5)


@pytest.mark.slow  # runs the real script and kills it
def test_a_killed_driver_takes_its_workers_with_it(model, tmp_path):
    """issue 33: the driver alone SIGKILLed (the OOM killer, `kill -9 PID`) while its two workers classify:
    they end at once, instead of living on as orphans that keep renaming part files into --output_fn."""
    from test_hostile_cases import alive, children

    from utils.processes import close_lock, open_lock
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(REVIEWS * 6) + "\n")  # 2,880 lines, 48 shards: seconds of work left at the kill
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "classify_plm.py"), "--model_fn", str(model), "--input_fn", str(corpus),
               "--output_fn", str(out), "--shard_size", "60", "--num_workers", "2"]
    process = subprocess.Popen(command, cwd=ROOT, env={**SCRIPT_ENV, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.time() + 120
        while not (len(workers) >= 2 and list(out.glob("part-*"))) and time.time() < deadline:
            assert process.poll() is None, "the run ended before it could be killed"
            workers = children(process.pid)
            time.sleep(0.02)
        assert len(workers) >= 2 and list(out.glob("part-*")), "the workers never classified a shard"
        process.kill()  # the driver only: its workers are not sent anything
        process.wait()
        written = sorted(out.glob("part-*"))
        deadline = time.time() + 3
        while any(alive(pid) for pid in workers) and time.time() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in workers), "orphaned worker processes"
        time.sleep(1)
        assert sorted(out.glob("part-*")) == written, "part files written after the driver died"
        assert len(written) < 48 and not (out / "_SUCCESS").exists()
        close_lock(open_lock(out / ".lock", blocking=False))  # a rerun may start at once
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the session (a failed test's orphans)
        except ProcessLookupError:
            pass


@pytest.mark.slow  # runs the real script
def test_bad_row_keeps_finished_shards_and_local_engine_imports_no_ray(model, tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": t}) + "\n" for t in REVIEWS[:250]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + "{not json\n")
    out = tmp_path / "out"
    failed = run_script("classify_plm.py", "--model_fn", model, "--input_fn", bad, "--output_fn", out,
                        "--shard_size", 100, "--num_workers", 1, check=False)
    assert_clean_failure(failed, "bad.jsonl:251: invalid JSON", "the 2 finished shard(s) of 3 are kept")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "_manifest.json", "part-00000.parquet", "part-00001.parquet"]

    missing = run_script("classify_plm.py", "--model_fn", model, "--input_fn", tmp_path / "nothing.txt",
                         "--output_fn", tmp_path / "new", check=False)
    assert_clean_failure(missing, "--input_fn", "nothing.txt: no such file")
    column = run_script("classify_plm.py", "--model_fn", model, "--input_fn", good, "--output_fn", tmp_path / "new",
                        "--text_column", "review", check=False)
    assert_clean_failure(column, "good.jsonl: no column 'review'", "--text_column")
    assert not (tmp_path / "new").exists(), "a failed run leaves nothing behind"

    run = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "classify_plm.py"), "--model_fn", str(model),
                          "--input_fn", str(good), "--output_fn", str(tmp_path / "ok")],
                         capture_output=True, text=True, env=SCRIPT_ENV, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    modules = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "batch.job" in modules  # the check sees the real imports
    assert not [m for m in modules if m.split(".")[0] == "ray"]


def test_engine_ray_without_ray_says_how_to_install(monkeypatch):
    from batch.ray_engine import connect, import_ray
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    with pytest.raises(UserError, match=r"pip install -r requirements/ray.txt"):
        import_ray()
    import socket
    with socket.socket() as free:  # a port nobody listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(UserError, match=f"--ray_address 127.0.0.1:{port}: no Ray cluster answers there"):
        connect(None, f"127.0.0.1:{port}")


def test_file_mode_reads_without_torch():
    """The ONNX backend's file mode: the job, the shards and the readers import no torch."""
    run = subprocess.run([sys.executable, "-c", "import batch.job, data_load.shards, sys; "
                          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'ray')))"],
                         capture_output=True, text=True, cwd=ROOT, env=SCRIPT_ENV, timeout=60)
    assert run.stdout.strip() == "[]", run.stderr
