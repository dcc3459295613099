"""Calibration: the expected calibration error, temperature scaling (--calibrate), and the temperature a
model stores applied alike by both classifiers and the export. (The trainers' --calibrate runs end to end in
test_end_to_end.py, whose hf fine-tune uses it.)"""
import json

import numpy as np
import pytest
from conftest import run_script
from test_onnx import REVIEWS, tiny_checkpoint

from scoring.calibration import expected_calibration_error, fit_temperature, log_loss, reliability_bins
from scoring.scores import sigmoid, softmax


def overconfident(multi_label, temperature=3.0, n=4000, seed=0):
    """(logits, gold): gold drawn from the probabilities of logits / temperature, so the logits are that
    many times too sure of themselves and `temperature` is the one that calibrates them."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.5, size=(n, 5))
    if multi_label:
        gold = (rng.random((n, 5)) < sigmoid(true_logits)).astype(int)
    else:
        cumulative = softmax(true_logits).cumsum(axis=1)
        gold = np.minimum((rng.random((n, 1)) > cumulative).sum(axis=1), 4)
    return true_logits * temperature, gold


@pytest.mark.parametrize("multi_label", [False, True])
def test_fitted_temperature_undoes_overconfidence(multi_label):
    logits, gold = overconfident(multi_label)
    temperature = fit_temperature(logits, gold, multi_label)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(logits, gold, multi_label)
    after = expected_calibration_error(logits / temperature, gold, multi_label)
    assert before > 0.05 and after < before / 3
    assert log_loss(logits / temperature, gold, multi_label) < log_loss(logits, gold, multi_label)
    # calibrated logits need (almost) none: the fit does not drift
    assert fit_temperature(logits / temperature, gold, multi_label) == pytest.approx(1.0, abs=0.02)


def test_reliability_bins_count_every_prediction():
    logits, gold = overconfident(False, n=500)
    rows = reliability_bins(logits, gold, multi_label=False)
    assert sum(count for *_, count in rows) == 500
    assert all(0 <= mean <= 1 and 0 <= accuracy <= 1 for _, mean, accuracy, _ in rows)
    # a model right every time it says 1.0 is perfectly calibrated
    sure = np.eye(5)[gold] * 50
    assert expected_calibration_error(sure, gold, multi_label=False) == pytest.approx(0, abs=1e-9)


@pytest.mark.slow  # exports and runs both classifiers
def test_both_backends_and_the_export_apply_the_stored_temperature(tmp_path):
    import torch
    from checkpoint.saved_model import load_checkpoint
    from inference.onnx_export import export
    model_fn = tiny_checkpoint(tmp_path / "m", "bert")
    record = json.loads((model_fn / "training_args.json").read_text())
    (model_fn / "training_args.json").write_text(json.dumps({**record, "calibration_temperature": 0.25}))
    export(model_fn, log=lambda message: None)  # verified against the torch model with its temperature

    tokenizer, model, _ = load_checkpoint(model_fn)
    with torch.inference_mode():
        raw = model(**tokenizer(REVIEWS[:20], padding=True, truncation=True, max_length=64,
                                return_tensors="pt")).logits.numpy()
    expected, uncalibrated = softmax(raw / 0.25).max(axis=1), softmax(raw).max(axis=1)
    assert np.abs(expected - uncalibrated).max() > 0.05  # the temperature changes what is printed

    def printed(*flags):
        out = run_script("classify_plm.py", "--model_fn", model_fn, "--with_prob", *flags,
                         stdin="\n".join(REVIEWS[:20]) + "\n").stdout.splitlines()
        return np.array([float(line.split("\t")[1]) for line in out])
    assert printed() == pytest.approx(expected, abs=1e-3)
    assert printed("--backend", "onnx") == pytest.approx(expected, abs=1e-3)

    # a temperature changed after the export: the ONNX graph divides by the old one, so it is refused
    (model_fn / "training_args.json").write_text(json.dumps({**record, "calibration_temperature": 0.5}))
    result = run_script("classify_plm.py", "--model_fn", model_fn, "--backend", "onnx", stdin="ok\n", check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "exported with temperature 0.25" in result.stderr and "export_plm.py --model_fn" in result.stderr


def test_bad_calibration_flags_and_records(tmp_path, capsys):
    from checkpoint.saved_model import SavedModel
    from options.training_flags import training_parser
    from utils.errors import UserError
    with pytest.raises(SystemExit) as stopped:
        training_parser("t").parse_args(["--model_fn", "m", "--train_fn", "f", "--regression", "--calibrate"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --calibrate scales class probabilities; --regression predicts a number: drop one of them (see --help)"]
    assert training_parser("t").parse_args(["--model_fn", "m", "--train_fn", "f", "--regression"]).calibrate is False

    model_fn = tiny_checkpoint(tmp_path / "m", "bert")
    record = json.loads((model_fn / "training_args.json").read_text())
    for bad in (0, -1.5, "2", True):
        (model_fn / "training_args.json").write_text(json.dumps({**record, "calibration_temperature": bad}))
        with pytest.raises(UserError, match="calibration_temperature .* is not a number above 0"):
            SavedModel.read(model_fn)


@pytest.mark.parametrize("case", ["two rows", "one class", "all right", "all wrong"])
def test_no_temperature_from_validation_that_cannot_fix_one(case, caplog):
    """1-2 validation rows, or a validation set of one class, fitted a temperature at the end of the range
    searched (0.05: "ECE 0.0000" and every later probability 1.0000), without a word. The fit is refused with
    a warning and no temperature is kept, so nothing divides the logits; a set that can fix one still does."""
    import datasets
    from scoring.calibration import calibration_temperature
    from training.evaluation import FIT_TEMPERATURE, evaluation
    logits, gold = overconfident(False, n=400)
    predicted = logits.argmax(axis=1)
    gold = {"two rows": predicted[:2], "one class": np.zeros(400, int), "all right": predicted,
            "all wrong": (predicted + 1) % 5}.get(case, gold)
    logits = logits[:len(gold)]
    at_an_end = min(abs(np.log(fit_temperature(logits, gold, False) / end)) for end in (0.05, 20.0)) < 0.01
    assert at_an_end or case == "one class"  # what the fit alone would have kept
    temperature, why = calibration_temperature(logits, gold, False)
    assert temperature is None and why
    rows = datasets.Dataset.from_dict({"text": ["t"] * len(gold), "label": [str(g) for g in gold], "labels": gold})
    result = evaluation(logits, rows, [str(i) for i in range(5)], temperature=FIT_TEMPERATURE)
    assert "temperature" not in result["metrics"] and np.array_equal(result["logits"], logits.astype(np.float32))
    assert f"--calibrate: no temperature fitted: {why}; the model's probabilities are left as they are" in caplog.text
    logits, gold = overconfident(False, n=400)
    assert calibration_temperature(logits, gold, False)[0] == pytest.approx(3.0, rel=0.15)
