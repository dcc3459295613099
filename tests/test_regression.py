"""--regression: one number a row, trained with both trainers on STS-B's files as they are (tab-separated
`.csv`, no header, 7 or 9 fields, literal quotes: --delimiter tab and columns by position), printed by
classify_plm.py in both backends, scored by evaluate_plm.py, loaded by transformers.pipeline; and
--delimiter itself."""
import json

import numpy as np
import pytest
from conftest import classifier_in_process, run_script, shared
from test_bad_input import assert_clean_failure

STSB_FLAGS = ["--delimiter", "tab", "--text_column", "5", "--text_pair_column", "6", "--label_column", "4"]


def stsb_sample(path, split, first, extra):
    """Lines of an STS-B file as they are: the first `first` and the rows `extra` (9-field rows among them)."""
    lines = shared("stsb", f"sts-{split}.csv").read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:first] + [lines[i] for i in extra]) + b"\n")
    return path


@pytest.fixture(scope="module")
def stsb(tmp_path_factory):
    directory = tmp_path_factory.mktemp("stsb")
    # rows 5553 on (train) and 1479 on (dev) carry the two attribution fields: 9 fields, not 7
    return {"train": stsb_sample(directory / "train.csv", "train", 150, range(5552, 5592)),
            "dev": stsb_sample(directory / "dev.csv", "dev", 40, range(1478, 1498))}


def test_delimiter_reads_the_stsb_files_as_they_are():
    from data_load.readers import read_examples
    examples = read_examples(shared("stsb", "sts-dev.csv"), "5", "6", "4", delimiter="\t")
    assert len(examples) == 1500  # with CSV quoting rows merge: 1,470 (the corpus README)
    assert sum('"' in e.text or '"' in (e.text_pair or "") for e in examples) == 110  # quotes kept as text
    nine = examples[1478]  # a headlines row with two attribution fields after sentence2
    assert float(nine.label) >= 0 and "emm.newsbrief" not in nine.text_pair


def test_delimiter_overrides_the_extension(tmp_path):
    from data_load.readers import read_examples
    path = tmp_path / "semicolons.txt"
    path.write_text('label;text\npos;"great; really"\nneg;bad;extra field\n', encoding="utf-8")
    examples = read_examples(path, "text", None, "label", delimiter=";")
    assert [(e.label, e.text) for e in examples] == [("pos", "great; really"), ("neg", "bad")]


def parse_error(capsys, *argv):
    """The one-line error of the trainers' parser for these flags (exit code 2), in process."""
    from options.training_flags import training_parser
    with pytest.raises(SystemExit) as stopped:
        training_parser("test").parse_args(["--model_fn", "m", "--train_fn", "x.tsv", *argv])
    assert stopped.value.code == 2
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize("value, message", [("tabs", "not a field separator"), ('"', "not a field separator")])
def test_bad_delimiter_is_a_flag_error(capsys, value, message):
    error = parse_error(capsys, "--delimiter", value)
    assert error.startswith("error: argument --delimiter") and message in error and "\n" not in error


def test_regression_refuses_class_flags(capsys):
    error = parse_error(capsys, "--regression", "--multi_label")
    assert "--multi_label" in error and "--regression" in error and "\n" not in error
    assert "not a regression score" in parse_error(capsys, "--regression", "--best_metric", "accuracy")


def test_non_numeric_label_is_file_and_line(tmp_path):
    from conftest import data_options
    from data_load import load_splits
    from utils.errors import UserError
    data = tmp_path / "scores.tsv"
    data.write_text("3.5\tA man is eating.\n4\tA dog runs.\nhigh\tA cat sleeps.\n", encoding="utf-8")
    with pytest.raises(UserError, match=f"^{data}:3: label 'high' is not a number"):
        load_splits(data_options(train_fn=str(data), regression=True))
    data.write_text("3.5\tA man is eating.\n4\tA dog runs.\nnan\tA cat sleeps.\n", encoding="utf-8")
    with pytest.raises(UserError, match=f"^{data}:3: label 'nan' is not a number"):
        load_splits(data_options(train_fn=str(data), regression=True))


@pytest.mark.parametrize("rows, line, message", [
    # finite, but past what the model's 32-bit floats hold once scaled: the spread was inf, the loss nan
    (["3.5", "1e308", "4"], 2, "label '1e308' is too large for --regression: the model computes in 32-bit floats, so "
                               "targets must lie within +-1e30; rescale them"),
    (["1e200", "-1e200", "1e200"], 1, "label '1e200' is too large"),
    # Python's float() reads it, Arrow (which reads the targets for training) does not: refused at its row
    (["3.5", "4", "1_000"], 3, "label '1_000' is not a number"),
])
def test_targets_the_model_cannot_hold_are_file_and_line(tmp_path, rows, line, message):
    from conftest import data_options
    from data_load import load_splits
    from utils.errors import UserError
    data = tmp_path / "scores.tsv"
    data.write_text("".join(f"{target}\tsentence {i}\n" for i, target in enumerate(rows)), encoding="utf-8")
    with pytest.raises(UserError) as refused:
        load_splits(data_options(train_fn=str(data), regression=True))
    assert str(refused.value).startswith(f"{data}:{line}: {message}"), str(refused.value)
    data.write_text("".join(f"{target}\tsentence {i}\n" for i, target in enumerate(["-1e30", "1e30", "2.5"] * 4)),
                    encoding="utf-8")
    targets = load_splits(data_options(train_fn=str(data), regression=True)).train_targets()  # the bound itself
    assert np.isfinite(targets).all() and np.isfinite(targets.std())


def numbers_of(model_fn, pairs, backend="torch"):
    """The classifier's numbers for (sentence, pair) items, in process (as classify_plm.py and the server get them)."""
    classifier = classifier_in_process(model_fn, "--backend", backend, "--batch_size", 16)
    prediction = classifier.predict([tuple(pair) for pair in pairs])
    assert all(row == [0] for row in prediction.label_ids)
    return [row[0] for row in prediction.scores]


@pytest.mark.slow  # trains with both trainers
@pytest.mark.parametrize("script", ["finetune_plm_native.py", "finetune_plm_hf.py"])
def test_regression_end_to_end(stsb, tiny_model, tmp_path, script, monkeypatch, capsys):
    model_fn = tmp_path / "sts"
    run_script(script, "--model_fn", model_fn, "--pretrained_model_name", tiny_model, "--train_fn", stsb["train"],
               "--test_fn", stsb["dev"], "--regression", *STSB_FLAGS, "--lr", "1e-3", "--n_errors", "10",
               "--n_epochs", "2" if script == "finetune_plm_native.py" else "1")
    record = json.loads((model_fn / "training_args.json").read_text())
    config = json.loads((model_fn / "config.json").read_text())
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1
    assert record["best_metric"] == "spearman" and record["target_std"] > 0 and 0 < record["target_mean"] < 5
    metrics = json.loads((model_fn / "metrics.json").read_text())["test"]
    assert {"pearson", "spearman", "mse", "mae", "loss"} <= set(metrics) and metrics["n_examples"] == 60
    history = json.loads((model_fn / "history.json").read_text())
    best = max(history, key=lambda row: row["valid_spearman"])
    assert json.loads((model_fn / "metrics.json").read_text())["valid"]["spearman"] == pytest.approx(
        best["valid_spearman"], abs=1e-6)
    assert (model_fn / "prediction_scatter.png").stat().st_size > 0 and not (model_fn / "confusion_matrix.png").exists()
    errors = [line.split("\t") for line in (model_fn / "errors.tsv").read_text().splitlines()]
    assert errors[0][:3] == ["abs_error", "gold", "predicted"] and len(errors) == 11
    assert [float(row[0]) for row in errors[1:]] == sorted((float(row[0]) for row in errors[1:]), reverse=True)

    # the saved model outputs the number itself (the training scale folded into its head): its error on the
    # test file is the one the trainer measured
    rows = [line.split("\t") for line in stsb["dev"].read_text(encoding="utf-8").splitlines()]
    pairs, gold = [row[5:7] for row in rows], [float(row[4]) for row in rows]
    torch_numbers = numbers_of(model_fn, pairs)
    assert len(set(torch_numbers)) > 1
    assert np.mean(np.abs(np.array(torch_numbers) - gold)) == pytest.approx(metrics["mae"], abs=1e-3)
    if script == "finetune_plm_hf.py":
        return  # the consumers below read the saved model alike, whichever trainer wrote it

    # classify_plm.py prints the number, the same in the onnx backend
    from inference.onnx_export import export
    export(model_fn, log=lambda line: None)
    stdin = "".join(f"{a}\t{b}\n" for a, b in pairs)
    printed = run_script("classify_plm.py", "--model_fn", model_fn, "--backend", "onnx", stdin=stdin).stdout.splitlines()
    assert [line.split("\t", 1)[1] for line in printed] == [f"{a}\t{b}" for a, b in pairs]
    np.testing.assert_allclose([float(line.split("\t")[0]) for line in printed], torch_numbers, atol=2e-4)
    assert_clean_failure(run_script("classify_plm.py", "--model_fn", model_fn, "--backend", "onnx", "--with_prob",
                                    stdin=stdin, check=False), "--with_prob", "regression model")

    # evaluate_plm.py scores the labelled file alike
    import sys

    import evaluate_plm
    monkeypatch.setattr(sys, "argv", ["evaluate_plm.py", "--model_fn", str(model_fn), "--test_fn", str(stsb["dev"]),
                                      *STSB_FLAGS, "--output_fn", str(tmp_path / "eval")])
    evaluate_plm.main()
    assert "Spearman" in capsys.readouterr().out
    scores = json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]
    for name in ("pearson", "spearman", "mse", "mae", "loss"):
        assert scores[name] == pytest.approx(metrics[name], abs=1e-4)
    assert (tmp_path / "eval" / "prediction_scatter.png").exists()

    # transformers.pipeline loads the directory and gives the same number
    from transformers import pipeline
    scored = pipeline("text-classification", model=str(model_fn))({"text": pairs[0][0], "text_pair": pairs[0][1]})
    assert scored["score"] == pytest.approx(torch_numbers[0], abs=1e-3)


@pytest.mark.parametrize("targets, message", [
    (["5"] * 6, "every training row has the target 5 (after the validation split): --regression needs targets "
                "that vary"),
    (["3", "4"], "the one training row has the target 3"),
])
def test_targets_that_do_not_vary_are_refused(tmp_path, targets, message):
    """Decided: as a classifier needs two classes, a regression needs two values to learn from (a constant
    column trained silently, to a model that says that value whatever the text)."""
    from conftest import data_options
    from data_load import load_splits
    from utils.errors import UserError
    data = tmp_path / "scores.tsv"
    data.write_text("".join(f"{target}\tsentence {i}\n" for i, target in enumerate(targets)), encoding="utf-8")
    with pytest.raises(UserError) as refused:
        load_splits(data_options(train_fn=str(data), regression=True))
    assert str(refused.value).startswith(f"{data}: {message}"), str(refused.value)
