"""--few_shot (training/few_shot.py): the recipe is chosen for a small training set and not for a large one,
changes only the schedule flags left at their defaults, and its model is saved like any other."""
import json

import pytest
from conftest import ROOT, run_script, training_options

from test_robustness import freeze_at_state, start

from training.few_shot import (FEW_SHOT_BATCH, FEW_SHOT_MIN_VALID_TO_CHOOSE, FEW_SHOT_PAIRS_LR, FEW_SHOT_PER_CLASS,
                               add_mean_pooling_layer, few_shot_schedule, fit_head, head_parameters, is_few_shot, keeps_last_weights, mean_pooled,
                               pair_phase, sentence_pairs)

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


@pytest.mark.slow  # three short runs of the real trainers on the tiny model
def test_recipe_for_a_small_set_and_not_for_a_large_one(tmp_path, tiny_model):
    """The recipe for 21 training texts (its pair phase, the pooling layer, its learning rate, the last weights
    kept), through a kill and --resume; its model loads, classifies and exports like any other; none for 432."""
    common = ["--pretrained_model_name", tiny_model, "--max_steps", 12, "--save_every", 4]
    small_args = ["--model_fn", tmp_path / "small", "--train_fn", small_set(tmp_path), *common]
    with open(tmp_path / "log", "w") as log:
        process = start("finetune_plm_native.py", small_args, log)
        freeze_at_state(tmp_path / "small", 4, process)
        process.kill()
        process.wait()
    first = (tmp_path / "log").read_text()
    assert "the encoder first learns from pairs of the 21 training texts" in first
    assert "a last layer passes the mean of the tokens" in first and "the head fitted first" in first
    small = run_script("finetune_plm_native.py", *small_args, "--resume")
    assert "resuming from" in small.stderr and "learns from pairs" not in small.stderr  # the state holds its result
    assert "training examples, --few_shot auto): --batch_size 8" in small.stderr
    assert "weights kept: the last epoch's (3 validation examples are too few" in small.stderr
    record = json.loads((tmp_path / "small" / "training_args.json").read_text())
    assert record["few_shot_recipe"] is True and record["batch_size"] == FEW_SHOT_BATCH
    assert record["few_shot_pairs"] == 20 and record["lr"] == FEW_SHOT_PAIRS_LR
    config = json.loads((tmp_path / "small" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3  # the tiny model's 2 and the pooling layer
    large = run_script("finetune_plm_hf.py", "--model_fn", tmp_path / "large", "--train_fn", TRAIN_FN,
                       "--pretrained_model_name", tiny_model, "--max_steps", 3)
    assert "few-shot recipe" not in large.stderr
    record = json.loads((tmp_path / "large" / "training_args.json").read_text())
    assert record["few_shot_recipe"] is False and record["batch_size"] == 32
    # the recipe's model loads and exports like any other
    texts = "Works well.\nBroke after a day.\n"
    by_torch = run_script("classify_plm.py", "--model_fn", tmp_path / "small", "--with_prob", stdin=texts).stdout
    run_script("export_plm.py", "--model_fn", tmp_path / "small")
    by_onnx = run_script("classify_plm.py", "--model_fn", tmp_path / "small", "--with_prob", "--backend", "onnx",
                         stdin=texts).stdout
    for a, b in zip(by_torch.splitlines(), by_onnx.splitlines(), strict=True):
        assert a.split("\t")[0] == b.split("\t")[0] in ("negative", "positive")
        assert float(a.split("\t")[1]) == pytest.approx(float(b.split("\t")[1]), abs=1e-3)


@pytest.fixture
def head_fit_case(tiny_model):
    """(the tiny model with the mean-pooling layer, 8 texts of two classes, their collator): what fit_head takes.
    (The untrained tiny model's first token is nearly the same for every text: the head reads the mean, as in the
    recipe.)"""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from data_load import TextClassificationCollator
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    texts = [f"{word} is here" for word in ("apple", "pear", "plum", "grape", "truck", "train", "boat", "plane")]
    encoded = tokenizer(texts)
    train_set = Dataset.from_dict({"input_ids": encoded["input_ids"], "token_type_ids": encoded["token_type_ids"],
                                   "labels": [0, 0, 0, 0, 1, 1, 1, 1]})
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    assert add_mean_pooling_layer(model)
    return model, train_set, TextClassificationCollator(tokenizer)


def test_fit_head_trains_the_head_alone(head_fit_case):
    """fit_head lowers the loss by training the pooler and the classifier only, and leaves requires_grad as it was."""
    import torch
    model, train_set, collate = head_fit_case
    head = {id(parameter) for parameter in head_parameters(model)}
    assert head == {id(parameter) for name, parameter in model.named_parameters()
                    if name.startswith(("bert.pooler.", "classifier."))}
    before = {name: parameter.clone() for name, parameter in model.named_parameters()}
    first = fit_head(model, train_set, collate, torch.device("cpu"), seed=0, steps=1)
    last = fit_head(model, train_set, collate, torch.device("cpu"), seed=0, steps=100, lr=0.02)  # an untrained encoder
    assert last < first / 2
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad
        assert torch.equal(parameter, before[name]) != (id(parameter) in head), name


def test_fit_head_holds_the_output_weights_small(head_fit_case, monkeypatch):
    """fit_head's L2 penalty (HEAD_C, SetFit's logistic regression's C) on the layer that writes the logits: the same
    fit without it (C huge) ends with larger output weights; the layer found is the classifier's last Linear."""
    import copy

    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    import training.few_shot as few_shot
    from checkpoint.pretrained import output_layer
    roberta = RobertaForSequenceClassification(RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                             num_attention_heads=2, intermediate_size=32))
    assert output_layer(roberta) is roberta.classifier.out_proj
    model, train_set, collate = head_fit_case
    assert output_layer(model) is model.classifier
    norms = {}
    for c in (1.0, 1e9):
        monkeypatch.setattr(few_shot, "HEAD_C", c)
        fitted = copy.deepcopy(model)
        fit_head(fitted, train_set, collate, torch.device("cpu"), seed=0, steps=40, lr=0.02)
        norms[c] = fitted.classifier.weight.norm().item()
    assert norms[1.0] < 0.6 * norms[1e9], norms  # 0.79 against 2.30 here


def test_the_pooling_layer_hands_the_mean_to_the_first_token(tmp_path, tiny_model):
    """After add_mean_pooling_layer the first token's output is the previous layer's mean over the real tokens
    (standardized), the saved model is an ordinary one with a layer more, and a layer of another shape is left."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DistilBertConfig,
                              DistilBertForSequenceClassification)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2).eval()
    batch = tokenizer(["a short one", "a somewhat longer text with more words in it"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        before = model.base_model(**batch).last_hidden_state
        assert add_mean_pooling_layer(model) and model.config.num_hidden_layers == 3
        after = model.base_model(**batch).last_hidden_state
        logits = model(**batch).logits
    mean = mean_pooled(lambda **_: type("Out", (), {"last_hidden_state": before}), batch)
    standardized = torch.nn.functional.layer_norm(mean, mean.shape[-1:])
    assert torch.cosine_similarity(after[:, 0], standardized).min() > 0.99
    assert torch.cosine_similarity(before[:, 0], standardized).max() < 0.9  # the first token was not the mean
    model.save_pretrained(tmp_path / "pooled")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pooled").eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, logits, atol=1e-6)
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2,
                                                                  hidden_dim=64))
    assert not add_mean_pooling_layer(distil) and distil.config.n_layers == 1


def test_the_last_weights_are_kept_when_validation_cannot_choose(tmp_path):
    from training.recorder import EvaluationRecorder
    assert keeps_last_weights({"batch_size": 8}, FEW_SHOT_MIN_VALID_TO_CHOOSE - 1)
    assert not keeps_last_weights({"batch_size": 8}, FEW_SHOT_MIN_VALID_TO_CHOOSE)
    assert not keeps_last_weights(None, 3)  # no recipe: the best epoch, as always
    for keep_last, kept in ((False, 0), (True, 1)):
        recorder = EvaluationRecorder(tmp_path / str(keep_last), tmp_path / str(keep_last), "accuracy", is_main=False,
                                      keep_last=keep_last)
        recorder._keep({"epoch": 1}, {"accuracy": 0.8})
        recorder._keep({"epoch": 2}, {"accuracy": 0.6})  # worse, later
        assert recorder.best_index == kept


def test_sentence_pairs_as_setfit_samples_them():
    labels = [0, 0, 0, 1, 1, 2]
    pairs = sentence_pairs(labels, 5, seed=0)
    assert len(pairs) == 2 * 5 * len(labels)
    for i in range(len(labels)):
        mine = [(j, target) for first, j, target in pairs if first == i]
        assert sorted(target for _, target in mine) == [0.0] * 5 + [1.0] * 5
        assert all((labels[j] == labels[i]) == (target == 1.0) for j, target in mine)
    one_class = sentence_pairs([1, 1, 1], 3, seed=0)  # a single class: positive pairs only
    assert len(one_class) == 9 and all(target == 1.0 for _, _, target in one_class)


def test_pair_phase_draws_a_class_together_and_leaves_the_head(tiny_model, monkeypatch):
    """On two classes of distinct words, the phase makes texts of one class closer (mean-pooled cosine) than
    texts of the two classes, changes the encoder and not the classifier's head. (The tiny model is untrained:
    it moves at a larger step than SetFit's 2e-5 for a pretrained encoder.)"""
    import torch

    from training import few_shot
    monkeypatch.setattr(few_shot, "PAIR_LR", 1e-3)
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from data_load import TextClassificationCollator
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    texts = [f"{word} {other}" for word in ("apple", "pear", "plum", "grape") for other in ("red", "green")] + \
            [f"{word} {other}" for word in ("truck", "train", "boat", "plane") for other in ("fast", "slow")]
    labels = [0] * 8 + [1] * 8
    encoded = tokenizer(texts)
    train_set = Dataset.from_dict({"input_ids": encoded["input_ids"], "token_type_ids": encoded["token_type_ids"],
                                   "labels": labels})
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    collate = TextClassificationCollator(tokenizer)

    def gap():
        model.eval()
        with torch.no_grad():
            batch = {k: v for k, v in collate([dict(input_ids=i, token_type_ids=t) for i, t in
                                              zip(encoded["input_ids"], encoded["token_type_ids"])]).items()}
            vectors = torch.nn.functional.normalize(mean_pooled(model.base_model, batch), dim=1)
        similarity = vectors @ vectors.T
        same = torch.tensor([[a == b for b in labels] for a in labels]) & ~torch.eye(16, dtype=torch.bool)
        other = torch.tensor([[a != b for b in labels] for a in labels])
        return (similarity[same].mean() - similarity[other].mean()).item()
    before = gap()
    head = {name: value.clone() for name, value in model.classifier.state_dict().items()}
    encoder = model.base_model.encoder.layer[0].attention.self.query.weight.clone()
    assert pair_phase(model, train_set, collate, torch.device("cpu"), seed=0, iterations=20,
                      show_progress=False) == 2 * 20 * 16
    assert gap() > before + 0.2
    assert not torch.equal(model.base_model.encoder.layer[0].attention.self.query.weight, encoder)
    assert all(torch.equal(value, head[name]) for name, value in model.classifier.state_dict().items())


def test_too_few_of_a_class_for_the_validation_split_hints_at_valid_fn(caplog, monkeypatch):
    import logging

    from data_load.validation import split_indices
    monkeypatch.setattr(logging.getLogger("finetune_plm"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="finetune_plm"):
        train, valid = split_indices([0, 0, 0, 0, 0, 0, 0, 1], 0.1, 0)  # one example of class 1
    assert len(train) + len(valid) == 8
    assert "cannot stratify the validation split" in caplog.text and "--valid_fn" in caplog.text
