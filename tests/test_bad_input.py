"""Bad input: a one-line error naming the file (and line), exit code 2, no traceback, nothing written.

Every data case is checked in-process against the shared data path (fast tier); one case per trainer
goes through the real script for the exit code, the single line and the absence of leftovers."""
import json
import shutil

import pytest
from conftest import data_options, run_script

from data_load import load_splits
from utils.errors import UserError


def assert_clean_failure(result, *expected, model_fn=None):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    if model_fn is not None:
        assert not model_fn.exists()
        assert not list(model_fn.parent.glob(f".{model_fn.name}.*")), "a partial run was left behind"


GOOD = "positive\tgreat\nnegative\tawful\n" * 10
CASES = {
    "missing_file": (None, None, ["missing.tsv: no such file"]),
    "no_tab": ("positive\tfine\nthis line has no tab\n", None, ["train.tsv:2: no tab found"]),
    "empty_train": ("", None, ["train.tsv: no examples found"]),
    "single_class": ("positive\ta\npositive\tb\n", None, ["only one class"]),
    "unseen_valid_label": (GOOD, "positive\tok\nneutral\tmeh\n", ["valid.tsv:2: label 'neutral' never occurs"]),
    "invalid_utf8": (b"positive\tok\nnegative\t\xc0\xaf bad\n", None, ["train.tsv:2: is not valid UTF-8"]),
    "nul_bytes": (b"positive\tok\x00\n", None, ["train.tsv:1: contains a NUL byte"]),
    "header_only_csv": ("text,label\n", None, ["no examples found"]),
    "empty_label_csv": ("text,label\nfine,1\nmissing,\n", None, ["train.csv:3: empty value in label column"]),
    "too_many_labels": ("".join(f"id{i}\ttext {i}\n" for i in range(10_001)), None, ["probably not the label column"]),
}


def write(path, content):
    if content is None:
        return path
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def data_files(tmp_path, case):
    train, valid, expected = CASES[case]
    train_fn = tmp_path / ("missing.tsv" if case == "missing_file" else
                           "train.csv" if case.endswith("_csv") else "train.tsv")
    write(train_fn, train)
    valid_fn = write(tmp_path / "valid.tsv", valid) if valid is not None else None
    return train_fn, valid_fn, expected


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_is_one_clear_error(tmp_path, case):
    train_fn, valid_fn, expected = data_files(tmp_path, case)
    args = data_options(train_fn=train_fn, valid_fn=valid_fn, test_fn=None, valid_ratio=0.1, seed=0,
                           text_column=None, text_pair_column=None, label_column=None)
    with pytest.raises(UserError) as error:
        load_splits(args)
    message = str(error.value)
    assert "\n" not in message
    for text in expected:
        assert text in message


@pytest.mark.slow
@pytest.mark.parametrize("script, case", [("finetune_plm_native.py", "no_tab"),
                                          ("finetune_plm_hf.py", "unseen_valid_label")])
def test_trainer_rejects_bad_data(tmp_path, script, case):
    train_fn, valid_fn, expected = data_files(tmp_path, case)
    args = ["--model_fn", tmp_path / "model", "--train_fn", train_fn]
    if valid_fn is not None:
        args += ["--valid_fn", valid_fn]
    assert_clean_failure(run_script(script, *args, check=False), *expected, model_fn=tmp_path / "model")


@pytest.mark.slow
def test_refuses_to_replace_an_unrelated_directory(tmp_path):
    unrelated = tmp_path / "my_documents"
    unrelated.mkdir()
    (unrelated / "thesis.txt").write_text("precious")
    train_fn = write(tmp_path / "train.tsv", GOOD)
    result = run_script("finetune_plm_native.py", "--model_fn", unrelated, "--train_fn", train_fn, check=False)
    assert_clean_failure(result, "is not a model written by this tool")
    assert (unrelated / "thesis.txt").read_text() == "precious"


@pytest.mark.slow
def test_half_precision_without_cuda(tmp_path):
    result = run_script("finetune_plm_hf.py", "--model_fn", tmp_path / "m", "--train_fn",
                        write(tmp_path / "t.tsv", GOOD), "--precision", "fp16", "--device", "cpu", check=False)
    assert_clean_failure(result, "--precision fp16 needs a CUDA GPU", model_fn=tmp_path / "m")


@pytest.mark.slow
def test_unreachable_hub_id_names_the_offline_default(tmp_path):
    result = run_script("finetune_plm_native.py", "--model_fn", tmp_path / "m", "--train_fn",
                        write(tmp_path / "t.tsv", GOOD), "--pretrained_model_name", "beomi/kcbert-base",
                        check=False, env={"HF_HUB_OFFLINE": "1"}, timeout=60)
    assert_clean_failure(result, "beomi/kcbert-base", "offline default", "local directory", model_fn=tmp_path / "m")


@pytest.mark.slow
def test_max_length_is_clamped(tmp_path, tiny_model):
    model_fn = tmp_path / "m"
    result = run_script("finetune_plm_native.py", "--model_fn", model_fn, "--train_fn", write(tmp_path / "t.tsv", GOOD),
                        "--pretrained_model_name", tiny_model, "--max_length", 100000, "--n_epochs", 1)
    assert "--max_length 100000 is more than the model allows; using 128" in result.stderr
    assert json.loads((model_fn / "training_args.json").read_text())["max_length"] == 128


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory, tiny_model):
    directory = tmp_path_factory.mktemp("small")
    train_fn = write(directory / "t.tsv", GOOD)
    run_script("finetune_plm_native.py", "--model_fn", directory / "m", "--train_fn", train_fn,
               "--pretrained_model_name", tiny_model, "--n_epochs", 1)
    return directory / "m"


@pytest.mark.slow
def test_classifier_rejects_non_checkpoints(tmp_path, small_checkpoint):
    assert_clean_failure(run_script("classify_plm.py", "--model_fn", tmp_path / "nothing", stdin="hi\n",
                                    check=False), "no such model directory")
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated" / "notes.txt").write_text("x")
    assert_clean_failure(run_script("classify_plm.py", "--model_fn", tmp_path / "unrelated", stdin="hi\n",
                                    check=False), "not a checkpoint written by")
    broken = tmp_path / "broken"
    shutil.copytree(small_checkpoint, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert_clean_failure(run_script("classify_plm.py", "--model_fn", broken, stdin="hi\n", check=False),
                         "cannot load the checkpoint")


# --- silent surprises, now refused (or warned about) in the shared data path -----------------------

ROWS_200 = "".join(f'{{"id": "r{i}", "text": "sentence {i}", "label": "{"ab"[i % 2]}"}}\n' for i in range(200))
SURPRISES = {
    # name: (file name, content, flags, expected words of the one-line error)
    "jsonl_list_label": ("t.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": ["x"]}\n', {},
                         ["t.jsonl:2:", "is a list"]),
    "jsonl_bool_label": ("t.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": true}\n', {},
                         ["t.jsonl:2:", "true, which is not a class"]),
    "jsonl_fraction_label": ("t.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0.5}\n', {},
                             ["t.jsonl:2:", "0.5"]),
    "same_number_two_ways": ("t.tsv", "01\ta\n1\tb\n2\tc\n", {}, ["'01' and '1' are the same number"]),
    "label_column_is_an_id": ("t.jsonl", ROWS_200, {"label_column": "id"}, ["200 distinct labels in 200 rows"]),
    "label_column_is_text": ("t.jsonl", ROWS_200, {"label_column": "text"},
                             ["--text_column and --label_column both name column 'text'"]),
    "pair_is_text": ("t.csv", "text,label\na,x\nb,y\n", {"text_pair_column": "text"},
                     ["--text_column and --text_pair_column both name column 'text'"]),
    "positional_over_header": ("t.csv", "label,text\nx,a\ny,b\n", {"label_column": "0", "text_column": "1"},
                               ["t.csv:1: looks like a header (label, text)", "--label_column"]),
    "reference_with_header": ("t.tsv", "label\tsentence\nx\ta\ny\tb\n", {}, ["t.tsv:1: looks like a header"]),
}


@pytest.mark.parametrize("case", list(SURPRISES))
def test_surprising_data_is_refused_with_one_line(tmp_path, case):
    name, content, flags, expected = SURPRISES[case]
    args = data_options(**{"train_fn": write(tmp_path / name, content), "valid_fn": None, "test_fn": None,
                              "valid_ratio": 0.5, "seed": 0, "text_column": None, "text_pair_column": None,
                              "label_column": None, **flags})
    with pytest.raises(UserError) as error:
        load_splits(args)
    for text in expected:
        assert text in str(error.value), str(error.value)


def test_integral_json_numbers_are_one_label_and_case_variants_are_warned(tmp_path, capsys):
    train = write(tmp_path / "t.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "1"}\n'
                                        '{"text": "c", "label": 1.0}\n{"text": "d", "label": 2}\n')
    args = data_options(train_fn=train, valid_fn=None, test_fn=None, valid_ratio=0.25, seed=0, text_column=None,
                        text_pair_column=None, label_column=None)
    assert load_splits(args).labels == ["1", "2"]
    args = data_options(train_fn=write(tmp_path / "c.tsv", "Positive\ta\npositive\tb\nnegative\tc\nnegative\td\n"),
                        valid_ratio=0.25, seed=0)
    assert load_splits(args).labels == ["Positive", "negative", "positive"]
    assert "'Positive' and 'positive' differ only in case" in capsys.readouterr().err


def test_validation_file_must_not_be_the_training_file(tmp_path):
    train = write(tmp_path / "t.tsv", GOOD)
    args = data_options(train_fn=train, valid_fn=str(tmp_path / "." / "t.tsv"), test_fn=None, valid_ratio=0.1,
                           seed=0, text_column=None, text_pair_column=None, label_column=None)
    with pytest.raises(UserError, match="--valid_fn .* is the training file"):
        load_splits(args)
