"""The flags as typed options (in process, no training): each flag defined once, the options frozen and built
without touching the parsed namespace, renamed flags still accepted under their old names."""
import sys

import pytest


def parse_evaluate_flags(monkeypatch, *flags):
    import evaluate_plm
    monkeypatch.setattr(sys, "argv", ["evaluate_plm.py", "--model_fn", "m", "--test_fn", "t.tsv", *flags])
    return evaluate_plm.parse_args()


def test_output_dir_is_the_old_name_of_output_fn(monkeypatch, capsys):
    assert parse_evaluate_flags(monkeypatch, "--output_fn", "reports").output_fn == "reports"
    assert "warning" not in capsys.readouterr().err
    args = parse_evaluate_flags(monkeypatch, "--output_dir", "reports")
    assert args.output_fn == "reports" and not hasattr(args, "output_dir")
    err = capsys.readouterr().err
    assert err.startswith("warning: --output_dir is deprecated: it is now --output_fn") and err.count("\n") == 1
    assert parse_evaluate_flags(monkeypatch).output_fn is None  # neither: the default


def test_help_marks_the_old_name_deprecated(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        parse_evaluate_flags(monkeypatch, "--help")
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--output_fn OUTPUT_FN directory the reports go to" in help_text
    assert "--output_dir OUTPUT_FN deprecated: the old name of --output_fn" in help_text


# --- the trainers' options: built once, frozen, never written into the parsed namespace -------------

def parsed_training_flags(*argv):
    from options.training_flags import training_parser
    return training_parser("tests").parse_args(list(map(str, argv)))


def test_options_keep_every_flag_as_given():
    """training_args.json and --resume's fingerprint read the flags through the options: the same keys,
    values and order as the parsed namespace they were built from."""
    from checkpoint.resume import run_fingerprint
    from options.training_flags import training_options
    args = parsed_training_flags("--model_fn", "m", "--train_fn", "t.tsv", "--batch_size", 8, "--no_group_by_length",
                                 "--label_columns", "a,b", "--best_metric", "micro_f1")
    options = training_options(args)
    assert list(options.record.items()) == list(vars(args).items())
    assert run_fingerprint(options.record, "native", ["x"], 1, {}) == run_fingerprint(vars(args), "native", ["x"], 1, {})
    assert options.schedule.batch_size == 8 and options.schedule.group_by_length is False
    assert options.data.labeling.columns == ("a", "b") and options.data.labeling.multi
    assert options.evaluation.best_metric == "micro_f1" and options.run.model_fn == "m"
    regression = training_options(parsed_training_flags("--model_fn", "m", "--train_fn", "t.tsv", "--regression"))
    assert regression.data.regression and regression.data.labeling.numbers
    assert regression.evaluation.best_metric == "spearman"  # the parser's default for --regression


def test_every_trainer_flag_has_a_typed_home():
    """A flag added to the parser reaches the layers below only through a field of the options: one it has
    not got would be in training_args.json but read by nothing."""
    import dataclasses

    from options.training_flags import (CrossValidationOptions, EvalOptions, ModelOptions, RunOptions,
                                        ScheduleOptions, SearchOptions, training_parser)
    from data_load.splits import DataOptions
    fields = {field.name for group in (DataOptions, ModelOptions, ScheduleOptions, EvalOptions, RunOptions,
                                       SearchOptions, CrossValidationOptions) for field in dataclasses.fields(group)}
    # read into another field: DataOptions.labeling and ScheduleOptions.group_by_length
    converted = {"multi_label", "label_separator", "label_columns", "label_names_fn", "no_group_by_length"}
    # read by the parser itself: a --config file's values are the other flags' (options/config.py)
    parsed = {"config"}
    flags = {action.dest for action in training_parser("tests")._actions if action.dest != "help"}
    assert flags - fields - converted - parsed == set()


def test_options_are_frozen():
    import dataclasses

    from conftest import training_options
    from inference.classifier import ClassifierOptions, Prediction
    options = training_options()
    groups = [options, options.data, options.model, options.schedule, options.evaluation, options.run,
              options.search, options.cross_validation, ClassifierOptions(*[None] * 11), Prediction(None, None, [], [])]
    for group in groups:
        name = dataclasses.fields(group)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(group, name, getattr(group, name))
    # a change is a new object; the one it was made from stays as it was
    changed = dataclasses.replace(options, schedule=dataclasses.replace(options.schedule, batch_size=4))
    assert changed.schedule.batch_size == 4 and options.schedule.batch_size == 32


def test_prepare_leaves_the_parsed_flags_as_they_were(tmp_path, tiny_model):
    """A whole prepare (data, tokenizer, model, schedule) in process: the namespace it was built from, and
    the options it was given, are unchanged after it."""
    import copy

    from conftest import ROOT
    from options.training_flags import training_options
    from training.prepare import prepare
    args = parsed_training_flags("--model_fn", tmp_path / "m", "--train_fn", ROOT / "data" / "review.sample.en.tsv",
                                 "--pretrained_model_name", tiny_model, "--max_length", 32, "--long_text", "sliding",
                                 "--class_weight", "balanced")
    before = copy.deepcopy(vars(args))
    options = training_options(args)
    run = prepare(options, "native")
    assert vars(args) == before
    assert options == training_options(args)
    # what prepare settled is the run's, not the flags': the stride, the learning rate, the model path
    assert run.stride is not None and run.lr is not None and run.model_name == str(tiny_model)
    assert options.model.stride is None and options.schedule.lr is None and args.lr is None


def test_distillation_settles_the_student_without_touching_the_flags(tmp_path):
    """distill_plm.py's student (half the teacher's layers, cut from the teacher; multi-label like it) is
    in the options and their record, not written into the parsed flags."""
    import copy
    import json

    import distill_plm
    from checkpoint.saved_model import SavedModel
    from options.training_flags import training_options
    from test_onnx import tiny_checkpoint
    teacher_fn = tiny_checkpoint(tmp_path / "teacher", "bert")
    argv = ["distill_plm.py", "--teacher_fn", str(teacher_fn), "--model_fn", str(tmp_path / "s"), "--train_fn", "t.tsv"]
    argv_before, sys.argv = sys.argv, argv
    try:
        args = distill_plm.parse_args()
    finally:
        sys.argv = argv_before
    before = copy.deepcopy(vars(args))
    teacher = SavedModel.read(teacher_fn)
    layers = json.loads((teacher_fn / "config.json").read_text())["num_hidden_layers"]
    options = training_options(args, **distill_plm.student_flags(args, teacher, layers))
    assert vars(args) == before and args.student_layers is None and args.pretrained_model_name is None
    assert options.record["student_layers"] == 1 and options.record["pretrained_model_name"] == str(teacher.path)
    assert options.model.pretrained_model_name == str(teacher.path)
    assert list(options.record) == list(vars(args))  # training_args.json keeps the flags' order


# --- the classifier's result, by name ----------------------------------------------------------------

def test_predict_returns_named_fields(tmp_path):
    from conftest import classifier_in_process
    from test_onnx import tiny_checkpoint
    classifier = classifier_in_process(tiny_checkpoint(tmp_path / "m", "bert"), "--top_k", 2)
    items = [("Works perfectly.", None), ("Broke after a day.", None), ("ok", None)]
    prediction = classifier.predict(items, top_k=2)
    assert prediction.logits.shape == prediction.probabilities.shape == (3, 2)
    assert prediction.probabilities.sum(axis=1) == pytest.approx([1, 1, 1], abs=1e-5)
    for probabilities, scores, ids in zip(prediction.probabilities, prediction.scores, prediction.label_ids):
        assert sorted(ids) == [0, 1] and scores[0] >= scores[1]
        assert list(scores) == pytest.approx([probabilities[i] for i in ids])
    # one request's rows of a batch the server shared
    rows = prediction.rows(1, 3)
    assert rows.label_ids == prediction.label_ids[1:] and rows.logits.tolist() == prediction.logits[1:].tolist()
    with pytest.raises(TypeError):  # not a tuple: read by name, not by position
        _, _, scores, ids = prediction


@pytest.mark.parametrize("flags, message", [
    ({"train_fn": None}, "the training data is missing"),
    ({"dataset_name": "someone/reviews"}, "--train_fn and --dataset_name both name the training data"),
    ({"dataset_config_name": "sst2"}, "--dataset_config_name needs --dataset_name"),
])
def test_the_training_data_is_checked_once_where_data_options_are_made(flags, message):
    """The trainers' flags and DataOptions made in code meet the same check, in DataOptions alone."""
    from conftest import training_options
    from data_load.splits import DataOptions
    from utils.errors import UserError
    with pytest.raises(UserError, match=message):
        training_options(**flags)
    with pytest.raises(UserError, match=message):
        DataOptions(**{"train_fn": "t.tsv", **flags})
