"""--few_shot (training/few_shot.py): the recipe is chosen for a small training set and not for a large one,
changes only the schedule flags left at their defaults, and its model is saved like any other."""
import json

import pytest
from conftest import ROOT, run_script, training_options

from training.few_shot import FEW_SHOT_BATCH, FEW_SHOT_PER_CLASS, few_shot_schedule, is_few_shot

TRAIN_FN = ROOT / "data" / "review.sample.en.tsv"  # 480 lines, 2 classes: 216 training examples a class


def small_set(tmp_path, per_class=12):
    lines = TRAIN_FN.read_text(encoding="utf-8").splitlines()
    rows = [line for label in ("negative", "positive")
            for line in [line for line in lines if line.startswith(label + "\t")][:per_class]]
    path = tmp_path / "small.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_auto_chooses_the_recipe_by_examples_per_class():
    assert is_few_shot("auto", 6 * 16, 6) and is_few_shot("auto", 6 * FEW_SHOT_PER_CLASS, 6)
    assert not is_few_shot("auto", 6 * FEW_SHOT_PER_CLASS + 1, 6) and not is_few_shot("auto", 4000, 6)
    assert is_few_shot("on", 4000, 6) and not is_few_shot("off", 12, 2)


def test_recipe_keeps_the_flags_given():
    defaults = {"n_epochs": 3, "batch_size": 32, "warmup_ratio": 0.1}
    given = training_options("--batch_size", 4).schedule
    settings, changes = few_shot_schedule(given, 96, defaults)
    assert settings.batch_size == 4 and "batch_size" not in changes
    assert settings.n_epochs == changes["n_epochs"] == 9  # 24 steps an epoch: 9 epochs reach 200 steps
    settings, changes = few_shot_schedule(training_options("--max_steps", 50).schedule, 96, defaults)
    assert settings.batch_size == FEW_SHOT_BATCH and "n_epochs" not in changes and settings.max_steps == 50


@pytest.mark.slow  # two short runs of the real trainer on the tiny model
def test_recipe_for_a_small_set_and_not_for_a_large_one(tmp_path, tiny_model):
    common = ["--pretrained_model_name", tiny_model, "--max_steps", 3]
    small = run_script("finetune_plm_native.py", "--model_fn", tmp_path / "small", "--train_fn", small_set(tmp_path),
                       *common)
    assert "training examples, --few_shot auto): --batch_size 8" in small.stderr
    record = json.loads((tmp_path / "small" / "training_args.json").read_text())
    assert record["few_shot_recipe"] is True and record["batch_size"] == FEW_SHOT_BATCH
    large = run_script("finetune_plm_hf.py", "--model_fn", tmp_path / "large", "--train_fn", TRAIN_FN, *common)
    assert "few-shot recipe" not in large.stderr
    record = json.loads((tmp_path / "large" / "training_args.json").read_text())
    assert record["few_shot_recipe"] is False and record["batch_size"] == 32
    # the recipe's model loads like any other
    out = run_script("classify_plm.py", "--model_fn", tmp_path / "small", stdin="Works well.\n").stdout
    assert out.split("\t")[0] in ("negative", "positive")


def test_too_few_of_a_class_for_the_validation_split_hints_at_valid_fn(caplog, monkeypatch):
    import logging

    from data_load.validation import split_indices
    monkeypatch.setattr(logging.getLogger("finetune_plm"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="finetune_plm"):
        train, valid = split_indices([0, 0, 0, 0, 0, 0, 0, 1], 0.1, 0)  # one example of class 1
    assert len(train) + len(valid) == 8
    assert "cannot stratify the validation split" in caplog.text and "--valid_fn" in caplog.text
