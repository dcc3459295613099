"""Multi-label classification: reading label sets (separator, JSON list, one 0/1 column per label, id
names), scores and the tuned threshold, the loss, the printed labels; and both trainers end to end
on GoEmotions and Korean UnSmile subsets with flags only."""
import json

import numpy as np
import pytest
import torch
from conftest import classifier_in_process, data_options, run_script, shared

from data_load import load_splits
from data_load.readers import Labeling, read_examples
from scoring.decision import choose_labels
from scoring.metrics import multi_label_metrics, summary_line, tune_threshold
from scoring.report import per_class_table
from training.loss import class_weights, loss_function
from utils.errors import UserError

GOEMOTIONS_FLAGS = ["--text_column", "0", "--label_column", "1", "--multi_label"]


def args_for(train_fn, tmp_path, **flags):
    return data_options(**{"train_fn": train_fn, "valid_fn": None, "test_fn": None, "valid_ratio": 0.25, "seed": 0,
                              "text_column": None, "text_pair_column": None, "label_column": None,
                              "cache_dir": tmp_path / "cache", "multi_label": True, **flags})


# --- reading ------------------------------------------------------------------------------------------

def test_label_sets_from_a_separator_a_json_list_and_flag_columns(tmp_path):
    (tmp_path / "r.tsv").write_text("joy,love\tso happy\n\tnothing at all\nanger\tfurious\n")
    assert [e.label for e in read_examples(tmp_path / "r.tsv", labeling=Labeling(multi=True))] == [
        ["joy", "love"], [], ["anger"]]
    (tmp_path / "l.jsonl").write_text('{"text": "a", "labels": ["x", "y"]}\n{"text": "b", "labels": []}\n')
    assert [e.label for e in read_examples(tmp_path / "l.jsonl", labeling=Labeling(multi=True))] == [["x", "y"], []]
    with pytest.raises(UserError, match=r"l\.jsonl:1: label 'labels' is a list: .* pass --multi_label"):
        read_examples(tmp_path / "l.jsonl")
    (tmp_path / "f.tsv").write_text("문장\t여성\t남성\tclean\n가\t1\t0\t0\n나\t0\t0\t1\n다\t1\t1\t0\n")
    flagged = Labeling(multi=True, columns=("여성:clean",))
    assert [e.label for e in read_examples(tmp_path / "f.tsv", text_column="문장", labeling=flagged)] == [
        ["여성"], ["clean"], ["여성", "남성"]]
    (tmp_path / "bad.tsv").write_text("문장\t여성\t남성\n가\t1\t2\n")
    with pytest.raises(UserError, match=r"bad\.tsv:2: label column '남성' holds '2': expected 0 or 1"):
        read_examples(tmp_path / "bad.tsv", text_column="문장", labeling=Labeling(multi=True, columns=("여성", "남성")))


def test_goemotions_ids_are_named_from_its_labels_file(tmp_path):
    goemotions = shared("goemotions")
    splits = load_splits(args_for(goemotions / "dev.tsv", tmp_path, text_column="0", label_column="1",
                                  label_names_fn=goemotions / "labels.txt"))
    assert len(splits.labels) == 28 and "neutral" in splits.labels and splits.multi_label
    assert len(splits.train) + len(splits.valid) == 5426
    (tmp_path / "names.txt").write_text("a\nb\n")
    (tmp_path / "ids.tsv").write_text("hello\t0,1\nbye\t2\n")
    with pytest.raises(UserError, match=r"ids\.tsv:2: label '2' is not an id of --label_names_fn \(0 to 1\)"):
        load_splits(args_for(tmp_path / "ids.tsv", tmp_path, text_column="0", label_column="1",
                             label_names_fn=tmp_path / "names.txt"))


def test_unsmile_reads_with_label_columns(tmp_path):
    unsmile = shared("korean_unsmile", "unsmile_valid_v1.0.tsv")
    splits = load_splits(args_for(unsmile, tmp_path, text_column="문장", label_columns="여성/가족:clean"))
    assert len(splits.labels) == 10 and {"clean", "악플/욕설", "여성/가족"} <= set(splits.labels)


def test_a_label_set_in_a_single_label_run_is_refused(tmp_path):
    (tmp_path / "t.tsv").write_text("joy\ta\nlove\tb\njoy,love\tc\nanger\td\n")
    with pytest.raises(UserError, match=r"t\.tsv:3: label 'joy,love' is several labels \(joy, love\).*--multi_label"):
        load_splits(args_for(tmp_path / "t.tsv", tmp_path, multi_label=False))


def test_unknown_label_in_a_validation_label_set(tmp_path):
    (tmp_path / "t.tsv").write_text("a,b\tx\nb\ty\na\tz\n")
    (tmp_path / "v.tsv").write_text("a\tx\nb,c\ty\n")
    with pytest.raises(UserError, match=r"v\.tsv:2: label 'c' never occurs in the training data"):
        load_splits(args_for(tmp_path / "t.tsv", tmp_path, valid_fn=tmp_path / "v.tsv"))


# --- scores, loss, printed labels ----------------------------------------------------------------------

def test_scores_and_tuned_threshold():
    gold = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
    logits = np.where(gold == 1, 0.0, -2.0)  # positives at p=0.5, negatives at p=0.12
    assert 0.15 <= tune_threshold(logits, gold) <= 0.5
    metrics = multi_label_metrics(logits, gold, ["a", "b", "c"])
    assert metrics["macro_f1"] == metrics["micro_f1"] == metrics["accuracy"] == 1.0 and metrics["roc_auc"] == 1.0
    at_high = multi_label_metrics(logits, gold, ["a", "b", "c"], threshold=0.9)
    assert at_high["micro_f1"] == 0.0 and at_high["per_class"]["a"]["support"] == 2


def test_thresholds_tuned_per_label():
    gold = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
    # label a separates between 0.62 and 0.82, label b between 0.12 and 0.32: no one threshold does both
    probabilities = np.array([[0.82, 0.32, 0.2], [0.62, 0.12, 0.2], [0.82, 0.12, 0.2], [0.62, 0.32, 0.2]])
    logits = np.log(probabilities / (1 - probabilities))
    overall = tune_threshold(logits, gold)
    assert overall == 0.3 and tune_threshold(logits, gold, per_label=True) == [0.65, 0.3, overall]  # c: no positives
    per_label = multi_label_metrics(logits, gold, ["a", "b", "c"], per_label=True)
    assert per_label["threshold"] == [0.65, 0.3, 0.3] and per_label["per_class"]["b"]["threshold"] == 0.3
    assert per_label["per_class"]["a"]["f1"] == per_label["per_class"]["b"]["f1"] == 1.0
    assert per_label["macro_f1"] > multi_label_metrics(logits, gold, ["a", "b", "c"])["macro_f1"]
    assert summary_line(per_label).endswith("(thresholds per label 0.30-0.65)")
    assert per_class_table(per_label).splitlines()[0].split() == ["label", "precision", "recall", "f1", "support",
                                                                  "threshold"]
    # the printed labels follow each label's own threshold, looked up by label id: c's 0.9 and b's 0.35 pass
    # their 0.3, a's 0.5 does not pass its 0.65 (one threshold for all, or one looked up by rank, would print a)
    assert choose_labels(np.array([[0.5, 0.35, 0.9]]), True, None, per_label["threshold"])[1] == [[2, 1]]


def test_an_undefined_score_is_written_as_json_null():
    from scoring.report import json_text
    gold = np.array([[1, 0], [1, 0]])  # no label has both positive and negative examples: ROC-AUC undefined
    metrics = multi_label_metrics(np.zeros((2, 2)), gold, ["a", "b"])
    assert np.isnan(metrics["roc_auc"])

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    assert json.loads(json_text({"valid": metrics}), parse_constant=refuse)["valid"]["roc_auc"] is None


def test_multi_label_loss_and_pos_weight():
    logits = torch.tensor([[2.0, -1.0], [0.0, 0.5]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    plain = loss_function(None, multi_label=True)(logits, labels)
    assert plain == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).item())
    weighted = loss_function(np.array([1.0, 4.0], dtype=np.float32), multi_label=True)(logits, labels)
    assert weighted > plain  # the positive of label 1 costs four times as much
    # balanced pos_weight: negatives / positives of each label
    assert class_weights("balanced", ["a", "b"], np.array([0, 0, 0, 1]), 4, multi_label=True) == pytest.approx([1 / 3, 3])


def test_a_new_multi_label_head_starts_at_the_label_frequencies(tmp_path, tiny_model):
    from checkpoint.pretrained import load_pretrained_model
    from training.loss import label_log_odds
    (tmp_path / "t.tsv").write_text("".join(f"{labels}\tsentence number {i}\n" for i, labels in
                                            enumerate(["a", "a,b", "", "a", "c"] * 4)))
    splits = load_splits(args_for(tmp_path / "t.tsv", tmp_path, valid_ratio=0.2))
    ids, n_labels, n_rows = splits.train_label_ids(), len(splits.labels), len(splits.train)
    odds = label_log_odds(ids, n_labels, n_rows)
    rows = splits.train.column("label").to_pylist()
    frequency = np.array([[label in row for label in splits.labels] for row in rows], dtype=float).mean(0)
    assert np.allclose(1 / (1 + np.exp(-odds)), frequency, atol=1e-3)
    model = load_pretrained_model(tiny_model, splits.labels, multi_label=True, label_odds=odds).eval()
    with torch.no_grad():
        first = torch.sigmoid(model(input_ids=torch.tensor([[101, 2023, 102], [101, 7592, 102]])).logits)
    assert np.allclose(first.numpy(), frequency, atol=0.03)  # not 0.5 for every label
    # balanced pos_weight makes every label's optimum constant 0.5: the biases start at 0
    weights = class_weights("balanced", splits.labels, splits.train_label_ids(), len(splits.train), multi_label=True)
    assert np.allclose(label_log_odds(ids, n_labels, n_rows, weights), 0, atol=1e-3)


def test_labels_printed_for_a_multi_label_model():
    probabilities = np.array([[0.9, 0.6, 0.1], [0.2, 0.3, 0.1]])
    scores, ids = choose_labels(probabilities, True, None, 0.5)
    assert ids == [[0, 1], [1]] and scores[1] == [pytest.approx(0.3)]  # none passes: the most probable
    assert choose_labels(probabilities, True, 1, 0.5)[1] == [[0], [1]]
    assert choose_labels(probabilities, False, None, 0.5)[1] == [[0], [1]]


# --- end to end ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_goemotions_native_classify_and_pipeline(tmp_path, tiny_model):
    goemotions = shared("goemotions")
    model_fn = tmp_path / "goemotions"
    run_script("finetune_plm_native.py", "--model_fn", model_fn, "--train_fn", goemotions / "train.tsv",
               "--valid_fn", goemotions / "dev.tsv", *GOEMOTIONS_FLAGS, "--label_names_fn", goemotions / "labels.txt",
               "--pretrained_model_name", tiny_model, "--max_train_samples", 800, "--max_eval_samples", 200,
               "--n_epochs", 1, "--lr", "1e-3", "--class_weight", "balanced", "--cache_dir", tmp_path / "cache")
    record = json.loads((model_fn / "training_args.json").read_text())
    assert record["multi_label"] and 0.05 <= record["threshold"] <= 0.95
    assert record["labels"][0] == "admiration" and record["labels"][-1] == "neutral"  # labels.txt order
    assert json.loads((model_fn / "config.json").read_text())["problem_type"] == "multi_label_classification"
    valid = json.loads((model_fn / "metrics.json").read_text())["valid"]
    assert {"micro_f1", "macro_f1", "weighted_f1", "accuracy", "roc_auc"} <= set(valid)
    assert len(valid["per_class"]) == 28 and valid["threshold"] == record["threshold"]
    assert (model_fn / "errors.tsv").read_text().splitlines()[0] == "loss\tgold\tpredicted\ttext"
    assert not (model_fn / "confusion_matrix.png").exists()

    names = set(record["labels"])
    text = "thank you so much, I love it\nwhy would you do that?\n"
    printed = run_script("classify_plm.py", "--model_fn", model_fn, "--with_prob", stdin=text).stdout.splitlines()
    for line in printed:
        labels, probabilities, _ = line.split("\t")
        assert set(labels.split(",")) <= names and len(labels.split(",")) == len(probabilities.split(","))
    # --threshold: every label at 0, the most probable one alone at 1 (the classifier classify_plm.py
    # builds, in this process: two script runs cost 7 s more)
    classifier = classifier_in_process(model_fn)
    items = [(line, None) for line in text.splitlines()]
    assert [len(ids) for ids in classifier.predict(items, threshold=0).label_ids] == [28, 28]
    assert [len(ids) for ids in classifier.predict(items, threshold=1).label_ids] == [1, 1]

    from transformers import pipeline
    scores = pipeline("text-classification", model=str(model_fn), top_k=None)(["thank you so much"])[0]
    assert {score["label"] for score in scores} == names
    assert sum(score["score"] for score in scores) > 1.5  # a sigmoid per label, not a softmax


@pytest.mark.slow
def test_native_threshold_per_label_reaches_classify(tmp_path, tiny_model):
    """No corpus needed: label sets on a synthetic file, a threshold per label tuned by the native trainer,
    stored, and applied label by label by classify_plm.py."""
    words = {"joy": "happy glad", "anger": "angry mad", "fear": "scared afraid", "love": "love adore"}
    rng = np.random.default_rng(0)
    rows = []
    for i in range(160):
        labels = [name for name in words if rng.random() < 0.35]
        rows.append(f"{','.join(labels)}\t" + " ".join([words[name] for name in labels] + [f"day {i}"]) + "\n")
    (tmp_path / "train.tsv").write_text("".join(rows))
    model_fn = tmp_path / "m"
    run_script("finetune_plm_native.py", "--model_fn", model_fn, "--train_fn", tmp_path / "train.tsv", "--multi_label",
               "--threshold_per_label", "--pretrained_model_name", tiny_model, "--n_epochs", 1, "--lr", "1e-3",
               "--cache_dir", tmp_path / "cache")
    record = json.loads((model_fn / "training_args.json").read_text())
    thresholds = dict(zip(record["labels"], record["threshold"]))
    assert sorted(thresholds) == sorted(words) and all(0.05 <= t <= 0.95 for t in thresholds.values())
    assert json.loads((model_fn / "metrics.json").read_text())["valid"]["threshold"] == record["threshold"]
    text = "".join(f"{words[a]} {words[b]} today\n" for a in words for b in words)
    printed = run_script("classify_plm.py", "--model_fn", model_fn, stdin=text).stdout.splitlines()
    # every label's probability, from the classifier classify_plm.py builds (in this process: a second script
    # run costs 4 s more of the suite)
    classifier = classifier_in_process(model_fn)
    all_probabilities = classifier.predict([(line, None) for line in text.splitlines()]).probabilities
    for row, chosen in zip(all_probabilities, printed):
        probability = dict(zip(classifier.labels, map(float, row)))
        passing = {name for name, p in probability.items() if p >= thresholds[name]}
        # (a probability within print rounding of its threshold could go either way: not judged)
        unclear = {name for name, p in probability.items() if abs(p - thresholds[name]) < 1e-3}
        expected = passing or {max(probability, key=probability.get)}
        assert set(chosen.split("\t")[0].split(",")) - unclear == expected - unclear


@pytest.mark.slow
def test_unsmile_hf_and_evaluate(tmp_path, tiny_model):
    unsmile = shared("korean_unsmile")
    flags = ["--text_column", "문장", "--label_columns", "여성/가족:clean"]
    model_fn = tmp_path / "unsmile"
    run_script("finetune_plm_hf.py", "--model_fn", model_fn, "--train_fn", unsmile / "unsmile_train_v1.0.tsv",
               "--valid_fn", unsmile / "unsmile_valid_v1.0.tsv", *flags, "--pretrained_model_name", tiny_model,
               "--max_train_samples", 600, "--max_eval_samples", 200, "--n_epochs", 1, "--lr", "1e-3",
               "--threshold_per_label", "--cache_dir", tmp_path / "cache")
    record = json.loads((model_fn / "training_args.json").read_text())
    assert record["multi_label"] and record["labels"][:2] == ["여성/가족", "남성"]  # column order
    assert len(record["labels"]) == 10 and "기타 혐오" in record["labels"]
    assert len(record["threshold"]) == 10 and all(0.05 <= t <= 0.95 for t in record["threshold"])
    out = tmp_path / "eval"
    result = run_script("evaluate_plm.py", "--model_fn", model_fn, "--test_fn", unsmile / "unsmile_valid_v1.0.tsv",
                        *flags, "--output_fn", out, "--cache_dir", tmp_path / "cache")
    scored = json.loads((out / "metrics.json").read_text())["test"]
    assert scored["n_examples"] == 3737 and scored["threshold"] == record["threshold"]  # one per label, as stored
    assert [scored["per_class"][name]["threshold"] for name in record["labels"]] == record["threshold"]
    assert "macro ROC-AUC" in result.stdout and "악플/욕설" in result.stdout and "thresholds per label" in result.stdout
    # --threshold replaces the stored ones with one for every label
    overridden = run_script("evaluate_plm.py", "--model_fn", model_fn, "--test_fn", unsmile / "unsmile_valid_v1.0.tsv",
                            *flags, "--threshold", "0.5", "--output_fn", tmp_path / "eval-0.5",
                            "--cache_dir", tmp_path / "cache")
    assert json.loads((tmp_path / "eval-0.5" / "metrics.json").read_text())["test"]["threshold"] == 0.5
    assert "(threshold 0.50)" in overridden.stdout
    assert sorted(p.name for p in out.iterdir()) == ["errors.tsv", "metrics.json", "reliability_diagram.png"]
    # the model's own directory, or one holding other files, is never replaced by a report
    # (evaluate_plm.py's own check, in this process: it runs before anything is loaded)
    import evaluate_plm
    from utils.errors import UserError
    for target in (model_fn, tmp_path):
        with pytest.raises(UserError, match="--output_fn"):
            evaluate_plm.check_output_dir(target, model_fn)
    assert (model_fn / "model.safetensors").exists()
