"""What a hostile user or a hostile machine does to a run: bad flags, a second run on the same model,
a full disk, a changed --resume, a checkpoint edited by hand, a checkpoint fine-tuned again on new
labels. Each ends in a working run or one `error:` line, exit 2, nothing left behind."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, SCRIPT_ENV, run_script

from checkpoint.pretrained import load_tokenizer
from checkpoint.resume import check_resume_matches, run_fingerprint
from checkpoint.run_dir import partial_dir, start_run
from checkpoint.saved_model import load_checkpoint
from options.training_flags import training_parser
from utils.errors import UserError, exit_on_user_error, on_failure

GOOD = "positive\tgreat\nnegative\tawful\n" * 10


def assert_one_line_error(result, *expected):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0], errors[0]


def no_leftovers(model_fn):
    return not model_fn.exists() and not list(model_fn.parent.glob(f".{model_fn.name}.*"))


# --- flags: every numeric flag is range-checked before anything loads (in-process, fast) -------------

BAD_FLAGS = [("--batch_size", "0"), ("--n_epochs", "0"), ("--lr", "-1"), ("--gradient_accumulation_steps", "0"),
             ("--max_grad_norm", "-1"), ("--max_length", "0"), ("--warmup_ratio", "2"), ("--save_every", "-1"),
             ("--save_total_limit", "0"), ("--n_errors", "-5"), ("--weight_decay", "-1"), ("--valid_ratio", "1"),
             ("--seed", "-3"), ("--lr", "nan"), ("--batch_size", "many")]


@pytest.mark.parametrize("flag, value", BAD_FLAGS)
def test_out_of_range_flag_is_one_line(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        training_parser("x").parse_args(["--model_fn", "m", "--train_fn", "t.tsv", flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: argument {flag}: "), err
    assert "expected" in err  # the allowed range is named


@pytest.mark.slow
def test_bad_flag_through_the_script(tmp_path):
    model_fn = tmp_path / "m"
    result = run_script("finetune_plm_native.py", "--model_fn", model_fn, "--train_fn", ROOT / "data" /
                        "review.sample.en.tsv", "--max_grad_norm", "-1", check=False)
    assert_one_line_error(result, "--max_grad_norm", "more than 0")
    assert no_leftovers(model_fn)


def test_flags_that_contradict_each_other_are_one_line(capsys):
    # single-label data has nothing to tune per label: the parser says so
    with pytest.raises(SystemExit) as exit_:
        training_parser("x").parse_args(["--model_fn", "m", "--train_fn", "t.tsv", "--threshold_per_label"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--threshold_per_label" in err, err
    training_parser("x").parse_args(["--model_fn", "m", "--train_fn", "t.tsv", "--multi_label", "--threshold_per_label"])


@pytest.mark.parametrize("flags, named", [
    (["--dataset_name", "x"], "--dataset_name"),
    (["--dataset_config_name", "sst2"], "--dataset_config_name")])
def test_which_training_data_is_checked_once_before_anything_is_written(tmp_path, flags, named):
    # which data a run reads is checked where the data options are made (data_load.splits.DataOptions)
    model_fn = tmp_path / "m"
    result = run_script("finetune_plm_native.py", "--model_fn", model_fn, "--train_fn", tmp_path / "t.tsv", *flags,
                        check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and named in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("where", ["under_a_file", "log_dir_is_a_file"])
def test_unwritable_output_is_refused_before_loading(tmp_path, where):
    (tmp_path / "a_file").write_text("x")
    model_fn = tmp_path / "a_file" / "m" if where == "under_a_file" else tmp_path / "m"
    extra = ["--log_dir", tmp_path / "a_file"] if where == "log_dir_is_a_file" else []
    result = run_script("finetune_plm_native.py", "--model_fn", model_fn, "--train_fn",
                        ROOT / "data" / "review.sample.en.tsv", *extra, check=False)
    assert_one_line_error(result, "a_file", "is a file")
    assert not (tmp_path / "m").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


# --- interrupts and clean-up ----------------------------------------------------------------------

def test_interrupt_outside_the_loop_is_one_line_and_runs_the_clean_ups(capsys):
    cleaned = []
    on_failure(lambda: cleaned.append(True) or "the state is kept")

    def main():
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as exit_:
        exit_on_user_error(main)
    assert exit_.value.code == 130 and cleaned == [True]
    assert capsys.readouterr().err.strip() == "interrupted: stopped at once; the state is kept"


def test_a_closed_pipe_is_not_turned_into_an_error():
    """`classify_plm.py ... | head`: classify_plm.py ends quietly when its reader goes away."""
    def main():
        raise BrokenPipeError(32, "Broken pipe")
    with pytest.raises(BrokenPipeError):
        exit_on_user_error(main)


# --- resume must continue the same run ------------------------------------------------------------

def test_resume_refuses_a_changed_run(tmp_path):
    from utils.files import file_digest
    train = tmp_path / "t.tsv"
    train.write_text(GOOD)
    args = training_parser("x").parse_args(["--model_fn", str(tmp_path / "m"), "--train_fn", str(train)])

    def fingerprint(labels, trainer="native", **changed):
        return run_fingerprint({**vars(args), **changed}, trainer, labels, 1, {"train_fn": file_digest(train)})
    start_run(args.model_fn, fingerprint(["negative", "positive"]))
    check_resume_matches(args.model_fn, fingerprint(["negative", "positive"]))  # same: fine
    with pytest.raises(UserError, match=r"--batch_size \(32 then, 16 now\)"):
        check_resume_matches(args.model_fn, fingerprint(["negative", "positive"], batch_size=16))
    train.write_text(GOOD + "neutral\tmeh\n")
    with pytest.raises(UserError, match="the contents of --train_fn, the labels"):
        check_resume_matches(args.model_fn, fingerprint(["negative", "neutral", "positive"]))
    with pytest.raises(UserError, match="started by finetune_plm_native.py: resume it with that script"):
        check_resume_matches(args.model_fn, fingerprint(["negative", "positive"], trainer="hf"))
    shutil.rmtree(partial_dir(args.model_fn))

    # a run interrupted before a flag existed (its record lacks it) resumes while the flag is at its default
    train.write_text(GOOD)
    old = fingerprint(["negative", "positive"])
    for added in ("hp_search", "hp_space"):
        del old["flags"][added]
    start_run(args.model_fn, old)
    check_resume_matches(args.model_fn, fingerprint(["negative", "positive"]))
    with pytest.raises(UserError, match=r"--hp_space \(None then, 'space.json' now\)"):
        check_resume_matches(args.model_fn, fingerprint(["negative", "positive"], hp_space="space.json"))
    shutil.rmtree(partial_dir(args.model_fn))


# --- checkpoints edited by hand (in-process) --------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    directory = tmp_path_factory.mktemp("checkpoint") / "m"
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(directory)
    (directory / "training_args.json").write_text(json.dumps({"max_length": 64}))
    return directory


def edited(checkpoint, tmp_path, edit):
    copy = tmp_path / "edited"
    shutil.copytree(checkpoint, copy)
    edit(copy)
    return copy


def set_id2label(id2label):
    def edit(directory):
        config = json.loads((directory / "config.json").read_text())
        config["id2label"] = id2label
        config["label2id"] = {v: int(k) for k, v in id2label.items()}
        (directory / "config.json").write_text(json.dumps(config))
    return edit


EDITS = {
    "id2label_gap": (set_id2label({"0": "negative", "2": "positive"}), "id2label has no class 1"),
    "id2label_wrong_size": (set_id2label({"0": "a", "1": "b", "2": "c"}), "cannot load the checkpoint"),
    "training_args_not_object": (lambda d: (d / "training_args.json").write_text("[1, 2]"), "expected a JSON object"),
    "training_args_not_json": (lambda d: (d / "training_args.json").write_text("{"), "cannot read it as JSON"),
    "tokenizer_missing": (lambda d: [(d / name).unlink() for name in ("tokenizer.json", "tokenizer_config.json")
                                     if (d / name).exists()] and [p.unlink() for p in d.glob("vocab.txt")],
                          "no tokenizer files"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_edited_checkpoint_is_one_clear_error(checkpoint, tmp_path, case, capfd):
    edit, expected = EDITS[case]
    with pytest.raises(UserError) as error:
        load_checkpoint(edited(checkpoint, tmp_path, edit))
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert "Traceback" not in capfd.readouterr().err


def test_tokenizer_without_its_vocabulary_is_refused(checkpoint, tmp_path):
    """AutoTokenizer would build a five-token fallback that turns every word into [UNK]."""
    directory = edited(checkpoint, tmp_path, lambda d: [p.unlink() for p in d.iterdir() if "token" in p.name
                                                        or p.name == "vocab.txt"])
    (directory / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    with pytest.raises(UserError, match="knows only 5 tokens"):
        load_tokenizer(directory)


# --- whole runs -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_second_run_on_the_same_model_refuses_at_once(tmp_path, tiny_model):
    model_fn = tmp_path / "m"
    train = tmp_path / "t.tsv"
    train.write_text(GOOD * 4)
    # a first run that cannot finish on its own while the second one starts, however busy the machine
    first = subprocess.Popen([sys.executable, str(ROOT / "finetune_plm_native.py"), "--model_fn", str(model_fn),
                              "--train_fn", str(train), "--pretrained_model_name", str(tiny_model), "--n_epochs",
                              "100000", "--save_every", "100000", "--seed", "1"], cwd=ROOT, env=SCRIPT_ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # its stderr read as it comes: SIGINT must reach it inside the training loop (where it saves a state to
    # resume), not while it still tokenizes (where it stops at once), however busy the machine
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: first.stderr.read(64), "")), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 300
        while "epoch 1/100000" not in "".join(chunks):
            assert time.time() < deadline and first.poll() is None, "the first run did not start training"
            time.sleep(0.2)
        assert partial_dir(model_fn).exists()
        second = run_script("finetune_plm_native.py", "--model_fn", model_fn, "--train_fn", train,
                            "--pretrained_model_name", tiny_model, "--seed", "2", check=False)
        assert_one_line_error(second, "another run is writing this model now")
        assert first.poll() is None, "the second run must not disturb the first"
    finally:
        first.send_signal(signal.SIGINT)  # stops after its current step, saving a resumable state
        first.wait(timeout=300)
        reader.join(timeout=60)
    stderr = "".join(chunks)
    assert first.returncode == 130, stderr
    assert "state saved; continue with --resume" in stderr
    # the partial run is the first run's, untouched by the second
    assert json.loads((partial_dir(model_fn) / "run.json").read_text())["flags"]["seed"] == 1
    assert not model_fn.exists() and not (tmp_path / ".m.lock").exists()


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="a small tmpfs needs root")
def test_disk_full_at_the_final_save_keeps_a_resumable_state(tmp_path, tiny_model):
    disk = tmp_path / "disk"
    disk.mkdir()
    weights = (tiny_model / "model.safetensors").stat().st_size
    # room for the resumable state (weights + AdamW moments) and the best weights, not for the final model
    size = int(4 * weights + 4 * 2 ** 20)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        model_fn = disk / "m"
        args = ["--model_fn", model_fn, "--train_fn", ROOT / "data" / "review.sample.en.tsv", "--pretrained_model_name",
                tiny_model, "--n_epochs", 1, "--save_total_limit", 1]
        full = run_script("finetune_plm_native.py", *args, check=False)
        assert_one_line_error(full, "cannot write the model", "is unchanged", "continue with --resume")
        assert not model_fn.exists()
        assert (partial_dir(model_fn) / "best_model.safetensors").exists()  # the best weights are not lost
        subprocess.run(["mount", "-o", f"remount,size={20 * size}", str(disk)], check=True)
        resumed = run_script("finetune_plm_native.py", *args, "--resume")
        assert "saved" in resumed.stderr
        assert (model_fn / "model.safetensors").exists() and not partial_dir(model_fn).exists()
    finally:
        subprocess.run(["umount", str(disk)])


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="a read-only mount needs root")
def test_read_only_directory_is_refused_before_loading(tmp_path):
    disk = tmp_path / "read_only"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        result = run_script("finetune_plm_native.py", "--model_fn", disk / "m", "--train_fn",
                            ROOT / "data" / "review.sample.en.tsv", check=False)
        assert_one_line_error(result, f"cannot write in {disk}", "Read-only file system")
    finally:
        subprocess.run(["umount", str(disk)])


@pytest.mark.slow
def test_fine_tuned_checkpoint_fine_tunes_again_on_new_labels(tmp_path, checkpoint):
    train = tmp_path / "three.tsv"
    train.write_text("".join(f"{'abc'[i % 3]}\tsentence {i} about {'abc'[i % 3]}\n" for i in range(60)))
    model_fn = tmp_path / "m3"
    result = run_script("finetune_plm_native.py", "--model_fn", model_fn, "--train_fn", train,
                        "--pretrained_model_name", checkpoint, "--n_epochs", 1)
    assert "is a classifier for 2 labels; its head is replaced by a new one for the 3 labels" in result.stderr
    assert json.loads((model_fn / "config.json").read_text())["id2label"] == {"0": "a", "1": "b", "2": "c"}


# --- the classifier's flags --------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [("--batch_size", "-1"), ("--batch_size", "0"), ("--chunk_size", "0"),
                                         ("--chunk_size", "-1"), ("--max_length", "-3"), ("--top_k", "0")])
def test_classifier_flag_out_of_range_is_one_line(flag, value, capsys, monkeypatch):
    import classify_plm
    monkeypatch.setattr(sys, "argv", ["classify_plm.py", "--model_fn", "m", flag, value])
    with pytest.raises(SystemExit) as exit_:
        classify_plm.parse_args()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err and err.startswith(f"error: argument {flag}: "), err


@pytest.mark.slow
def test_classifier_clamps_max_length_to_the_model(checkpoint):
    long_line = "word " * 5000
    result = run_script("classify_plm.py", "--model_fn", checkpoint, "--max_length", 100000,
                        stdin=f"{long_line}\nshort\n")
    assert "--max_length 100000 is more than the model allows; using 128" in result.stderr
    assert [line.split("\t")[1] for line in result.stdout.splitlines()] == [long_line, "short"]
    bad = run_script("classify_plm.py", "--model_fn", checkpoint, "--batch_size", -1, stdin="x\n", check=False)
    assert_one_line_error(bad, "--batch_size", "at least 1")
    assert bad.stdout == ""
