"""The model card (checkpoint/model_card.py), built from fixture records: what it says, and that
huggingface_hub's ModelCard parses it back. No training: the fast tier."""
import json

import pytest

from checkpoint.model_card import (CARD, EVALUATIONS, ONNX_RECORD, evaluation_result, model_card, record_evaluation,
                                   refresh_model_card, write_model_card)
from options.training_flags import flag_defaults
from utils.hub import DEFAULT_MODEL_ID, default_model_path

LABELS = ["negative", "positive"]


def scores(accuracy, n):
    return {"loss": 0.31, "accuracy": accuracy, "macro_f1": accuracy - 0.01, "weighted_f1": accuracy - 0.005,
            "mcc": 0.8, "ece": 0.03, "n_examples": n, "confusion_matrix": [[20, 4], [3, 21]],
            "per_class": {label: {"precision": 0.9, "recall": 0.85, "f1": 0.87, "support": n // 2} for label in LABELS}}


def saved_model(directory, record=None, config=None, metrics=None, history=None):
    """A model directory as a run leaves it, without real weights (the card never reads them)."""
    directory.mkdir(parents=True, exist_ok=True)
    labels = (config or {}).pop("labels", LABELS)
    (directory / "config.json").write_text(json.dumps({
        "model_type": "bert", "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)}, "problem_type": "single_label_classification",
        "max_position_embeddings": 512, **(config or {})}))
    (directory / "model.safetensors").write_bytes(b"")
    flags = {**flag_defaults(), "model_fn": "models/review", "train_fn": "data/review.tsv", "test_fn": "data/test.tsv",
             "pretrained_model_name": default_model_path(), "lr": 2e-4, "precision": "fp32", "n_epochs": 4,
             "batch_size": 16, "best_metric": "macro_f1", "calibrate": False}
    (directory / "training_args.json").write_text(json.dumps({
        **flags, "trainer": "native", "labels": labels, "has_pairs": False, "n_train": 432, "n_valid": 48,
        "world_size": 1, "multi_label": False, "optimizer_steps": 108,
        "data": {"train": {"source": "data/review.tsv", "digest": "a" * 40, "rows": 432, "note": "what the validation split left"},
                 "valid": {"source": "data/review.tsv", "digest": "a" * 40, "rows": 48, "note": "split from the training data"},
                 "test": {"source": "data/test.tsv", "digest": "b" * 40, "rows": 60, "note": ""}},
        "versions": {"torch": "2.13.0", "transformers": "5.23.0"}, "finished_at": "2026-01-02T03:04:05+0000",
        **(record or {})}))
    (directory / "metrics.json").write_text(json.dumps(metrics or {"valid": scores(0.875, 48), "test": scores(0.85, 60)}))
    (directory / "history.json").write_text(json.dumps(history or [
        {"epoch": epoch, "step": 27 * epoch, "train_loss": 0.5 / epoch, "valid_loss": 0.3, "valid_macro_f1": f1}
        for epoch, f1 in zip(range(1, 5), (0.7, 0.9, 0.88, 0.9))]))
    for picture in ("learning_curve.png", "confusion_matrix.png", "reliability_diagram.png"):
        (directory / picture).write_bytes(b"\x89PNG\r\n\x1a\n")
    return directory


def test_the_card_says_what_the_model_is_and_the_hub_parses_it(tmp_path):
    from huggingface_hub import ModelCard
    model_fn = saved_model(tmp_path / "review")
    path = write_model_card(model_fn, flag_defaults(), name="review")
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-classification"
    assert data.base_model == DEFAULT_MODEL_ID
    assert data.license == "apache-2.0" and data.language == "en"  # the base model's, from its packaged card
    assert set(data.metrics) >= {"accuracy", "f1", "matthews_correlation"}
    results = {(result.dataset_split, result.metric_type, (result.metric_args or {}).get("average")): result.metric_value
               for result in data.eval_results}
    assert results[("validation", "accuracy", None)] == 0.875 and results[("test", "accuracy", None)] == 0.85
    assert results[("test", "f1", "macro")] == pytest.approx(0.84)
    assert {result.dataset_name for result in data.eval_results} == {"review.tsv", "test.tsv"}
    text = card.text
    assert "| 0 | negative |" in text and "| 1 | positive |" in text  # the labels
    assert "a" * 40 in text and "| 432 |" in text and "| 60 |" in text  # the data: digests and rows
    assert "| `--n_epochs` | `4` | `3` |" in text and "| `--batch_size` | `16` | `32` |" in text
    assert "`--seed`" not in text and "`--lr`" not in text  # at the default, or resolved (said in the line above)
    assert "Best evaluation: epoch 2 (step 54) of 4 evaluations" in text  # the earliest of the tied best
    for picture in ("learning_curve.png", "confusion_matrix.png", "reliability_diagram.png"):
        assert f"]({picture})" in text  # relative links to the pictures beside it
    assert "prediction_scatter.png" not in text  # a picture this run did not write is not linked
    for usage in ("python classify_plm.py --model_fn models/review", "python serve_plm.py --model_fn models/review",
                  'pipeline("text-classification", model="models/review")',
                  "finetune_plm_native.py --config models/review/training_args.json"):
        assert usage in text
    assert "Transformers 5.23.0" in text and "PyTorch 2.13.0" in text
    assert "up to 128 tokens" in text and "--long_text head_tail" in text  # the limitations
    assert "ONNX" not in text and "temperature" not in text
    assert "&id" not in path.read_text()  # every result written out, no YAML anchors


def test_multi_label_calibrated_distilled_card(tmp_path):
    from huggingface_hub import ModelCard
    labels = ["joy", "anger", "fear"]
    valid = {"loss": 0.1, "accuracy": 0.4, "micro_f1": 0.6, "macro_f1": 0.5, "weighted_f1": 0.55, "roc_auc": 0.9,
             "ece": 0.01, "threshold": [0.3, 0.45, 0.5], "multi_label": True, "n_examples": 400,
             "per_class": {label: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 100} for label in labels}}
    model_fn = saved_model(
        tmp_path / "emotions", config={"labels": labels, "problem_type": "multi_label_classification"},
        record={"multi_label": True, "threshold_per_label": True, "threshold": [0.3, 0.45, 0.5],
                "calibration_temperature": 1.25, "trainer": "distill", "has_pairs": True, "teacher_fn": "models/t",
                "distillation": {"teacher_fn": "models/t", "temperature": 2.0, "soft_weight": 0.5, "teacher_layers": 6,
                                 "student_layers": 3, "layers_kept": [0, 2, 5], "n_unlabeled": 1000}},
        metrics={"valid": valid}, history=[{"epoch": 1, "step": 10, "train_loss": 0.2, "valid_macro_f1": 0.5}])
    card = ModelCard.load(write_model_card(model_fn, flag_defaults()))
    assert {"multi-label-classification", "sentence-pair-classification", "distillation"} <= set(card.data.tags)
    assert {(r.metric_type, (r.metric_args or {}).get("average")) for r in card.data.eval_results} >= {
        ("f1", "micro"), ("roc_auc", "macro")}
    text = card.text
    assert "| 1 | anger | 0.5000 (100) | 0.45 |" in text  # each label's own threshold
    assert "temperature 1.25" in text and "top_k=None" in text and "text_pair" in text
    assert "layers 0, 2, 5" in text and "distill_plm.py --config" in text
    assert "`--teacher_fn`" not in text  # distillation's flags are in its own section


def test_regression_card(tmp_path):
    from huggingface_hub import ModelCard
    valid = {"loss": 0.4, "pearson": 0.86, "spearman": 0.85, "mse": 0.6, "mae": 0.6, "regression": True,
             "n_examples": 1500}
    model_fn = saved_model(tmp_path / "stsb", config={"labels": ["score"], "problem_type": "regression"},
                           record={"regression": True, "target_mean": 2.7, "target_std": 1.5, "has_pairs": True,
                                   "best_metric": "spearman", "pretrained_model_name": "klue/roberta-base"},
                           metrics={"valid": valid}, history=[{"epoch": 1, "step": 5, "train_loss": 1.0,
                                                               "valid_spearman": 0.85}])
    card = ModelCard.load(write_model_card(model_fn, flag_defaults()))
    assert card.data.pipeline_tag == "text-classification" and card.data.base_model == "klue/roberta-base"
    assert "license" not in card.data.to_dict()  # no local card of the base model to take it from
    assert {r.metric_type for r in card.data.eval_results} == {"loss", "pearsonr", "spearmanr", "mse", "mae"}
    assert {r.task_name for r in card.data.eval_results} == {"Text Regression"}
    text = card.text
    assert 'function_to_apply="none"' in text and "mean 2.7, standard deviation 1.5" in text
    assert "`--best_metric`" not in text  # spearman is a regression run's default


def test_evaluations_and_export_join_the_card(tmp_path):
    """evaluate_plm.py's result (evaluations.json; the same reports directory replaces its entry) and
    export_plm.py's record (onnx_export.json) reach the card when it is refreshed."""
    from huggingface_hub import ModelCard
    model_fn = saved_model(tmp_path / "review")
    for accuracy in (0.5, 0.75):  # evaluated twice into the same reports: one entry, the later one
        result = evaluation_result("data/new.tsv", "c" * 40, scores(accuracy, 80), model_fn / "evaluation" / "new.tsv",
                                   model_fn)
        refresh_model_card(model_fn, flag_defaults(), change=lambda: record_evaluation(model_fn, result))
    assert len(json.loads((model_fn / EVALUATIONS).read_text())["evaluations"]) == 1
    (model_fn / ONNX_RECORD).write_text(json.dumps({
        "opset": 23, "torch_ms_per_batch": 20.0, "speed_note": "a rough figure",
        "files": {"model.onnx": {"precision": "fp32", "size_mb": 86.7, "max_abs_logit_difference": 1e-6,
                                 "ms_per_batch": 15.0},
                  "model.int8.onnx": {"precision": "int8", "size_mb": 22.0, "max_abs_logit_difference": 0.05,
                                      "ms_per_batch": 10.0}},
        "versions": {"onnxruntime": "1.32.0"}}))
    card = ModelCard.load(refresh_model_card(model_fn, flag_defaults()))
    evaluated = [r for r in card.data.eval_results if r.dataset_name == "new.tsv"]
    assert {r.metric_type: r.metric_value for r in evaluated}["accuracy"] == 0.75
    text = card.text
    assert "[evaluation/new.tsv](evaluation/new.tsv/metrics.json)" in text
    assert "[model.int8.onnx](model.int8.onnx)" in text and "15.0 ms" in text and "onnxruntime 1.32.0" in text
    assert "onnx" in card.data.tags


def test_a_held_model_keeps_its_card_with_a_warning(tmp_path, caplog):
    """A training run writing the model holds it: the card is left as it was, and the command that asked
    (evaluate_plm.py, export_plm.py) says so in a warning instead of failing after its own work is done."""
    from checkpoint.run_dir import hold_model
    model_fn = saved_model(tmp_path / "review")
    with hold_model(model_fn, "a test"):
        assert refresh_model_card(model_fn, flag_defaults()) is None
    assert not (model_fn / CARD).exists()
    assert "the model card was not updated" in caplog.text


def test_a_card_without_history_or_metrics(tmp_path):
    """A directory written by hand (as the ONNX tests do): the card says what the record holds, and no more."""
    model_fn = saved_model(tmp_path / "bare")
    (model_fn / "metrics.json").unlink()
    (model_fn / "history.json").unlink()
    text = model_card(model_fn, flag_defaults())
    assert "model-index" not in text and "Best evaluation" not in text and "## How to use" in text
