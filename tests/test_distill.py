"""distill_plm.py: a tiny teacher distilled into a student with fewer layers on a few labelled lines and
many unlabelled ones; the student is an ordinary checkpoint and has learned the teacher's predictions from
the unlabelled text. Multi-label distillation, and bad input as one line."""
import dataclasses
import json
import random
import re

import pytest
from conftest import data_options, emotion_rows, run_script, write_tsv

# The teacher's task is one a 2-layer BERT from scratch learns in seconds and that generalises: whether an
# emotion line holds one of four words (53% of lines do).
MARKERS = re.compile(r"\b(feeling|im|not|like)\b")
LABELS = ["marked", "plain"]
TRAINING = ["--lr", 3e-3, "--batch_size", 16, "--max_length", 32]


def marked(split, start, stop):
    """(label, text) rows start..stop of an emotion split, labelled by whether the text holds a marker word."""
    return [("marked" if MARKERS.search(text) else "plain", text) for _, text in emotion_rows(split, stop)[start:]]


def predictions(model_fn, texts):
    """Label ids as plain transformers predicts them from the checkpoint."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_fn)
    model = AutoModelForSequenceClassification.from_pretrained(model_fn).eval()
    with torch.inference_mode():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        return model(**batch).logits.argmax(-1).tolist()


def fit_teacher(directory, tiny_model, rows):
    """The tiny model fine-tuned in this process and saved as a checkpoint: 3 epochs of batches of 32 texts of
    similar length take 3 s here, a trainer's process 10 s."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=2, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    rows = sorted(rows, key=lambda row: len(row[1]))
    batches = [rows[start:start + 32] for start in range(0, len(rows), 32)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the scripts run under pytest -n 2
    try:
        for epoch in range(3):
            for batch in random.Random(epoch).sample(batches, len(batches)):
                inputs = tokenizer([text for _, text in batch], padding=True, truncation=True, max_length=32,
                                   return_tensors="pt")
                model(**inputs, labels=torch.tensor([LABELS.index(label) for label, _ in batch])).loss.backward()
                optimizer.step()
                optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "training_args.json").write_text(json.dumps({"max_length": 32}))
    return directory


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tiny_model):
    """A 2-layer teacher fine-tuned on 960 labelled lines; a student of 1 layer from scratch (the tiny model
    cut to its first layer) given 40 labelled lines and 840 further lines of unlabelled text. 40 labels alone
    teach such a student nothing: trained on 60 of them (3 epochs) it stayed at the majority class."""
    directory = tmp_path_factory.mktemp("distill")
    valid = write_tsv(directory / "valid.tsv", marked("val", 0, 300))
    teacher = fit_teacher(directory / "teacher", tiny_model, marked("train", 0, 960))
    unlabelled = directory / "unlabelled.txt"
    unlabelled.write_text("".join(f"{text}\n" for _, text in marked("train", 960, 1800)), encoding="utf-8")
    student = directory / "student"
    result = run_script("distill_plm.py", "--teacher_fn", teacher, "--model_fn", student, "--unlabeled_fn", unlabelled,
                        "--train_fn", write_tsv(directory / "labelled.tsv", marked("train", 0, 40)),
                        "--valid_fn", valid, "--pretrained_model_name", tiny_model, "--student_layers", 1,
                        "--n_epochs", 3, *TRAINING)
    return {"teacher": teacher, "student": student, "stderr": result.stderr,
            "held_out": [text for _, text in marked("val", 300, 600)]}


@pytest.mark.slow
def test_the_student_is_smaller_loads_everywhere_and_learned_from_the_teacher(distilled, tmp_path):
    teacher, student = distilled["teacher"], distilled["student"]
    config = json.loads((student / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and json.loads((teacher / "config.json").read_text())["num_hidden_layers"] == 2
    assert config["id2label"] == json.loads((teacher / "config.json").read_text())["id2label"]
    record = json.loads((student / "training_args.json").read_text())
    assert record["trainer"] == "distill"
    assert record["distillation"]["layers_kept"] == [0] and record["distillation"]["n_unlabeled"] == 840
    assert "40 labelled + 840 unlabelled" in distilled["stderr"] and "on validation loss" in distilled["stderr"]

    # learned from the teacher: on held-out text it predicts as the teacher does, far above chance (the
    # teacher's commoner prediction)
    held_out = distilled["held_out"]
    teacher_says = predictions(teacher, held_out)
    assert sum(LABELS[i] == label for i, (label, _) in zip(teacher_says, marked("val", 300, 600))) > 0.9 * len(held_out)
    chance = max(teacher_says.count(0), teacher_says.count(1)) / len(held_out)
    agreement = sum(a == b for a, b in zip(predictions(student, held_out), teacher_says)) / len(held_out)
    assert agreement > chance + 0.3, (agreement, chance)  # 0.96 against 0.52 here

    # an ordinary checkpoint: the classifier and the evaluator load it unchanged
    short = [text for text in held_out if len(text.split()) < 20][:50]  # within 32 tokens: no head_tail cut
    labels = [config["id2label"][str(i)] for i in predictions(student, short)]
    out = run_script("classify_plm.py", "--model_fn", student, stdin="\n".join(short) + "\n").stdout
    assert [line.split("\t")[0] for line in out.splitlines()] == labels
    test_fn = write_tsv(tmp_path / "test.tsv", marked("val", 300, 400))
    run_script("evaluate_plm.py", "--model_fn", student, "--test_fn", test_fn)
    assert json.loads((student / "evaluation" / "test.tsv" / "metrics.json").read_text())["test"]["accuracy"] > 0.8
    # the student's card: its distillation, and the evaluation just made (evaluate_plm.py adds it)
    from huggingface_hub import ModelCard
    card = ModelCard.load(student / "README.md")
    assert "distillation" in card.data.tags and "### Distillation" in card.text and "the teacher's layers 0" in card.text
    assert "[evaluation/test.tsv](evaluation/test.tsv/metrics.json)" in card.text
    assert any(r.dataset_name == "test.tsv" and r.metric_type == "accuracy" for r in card.data.eval_results)


def test_multi_label_distillation(tmp_path, tiny_model):
    """A multi-label teacher (--multi_label inherited from it): the student is multi-label, with a threshold."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    labels = ["fear", "joy", "sadness"]
    teacher = tmp_path / "teacher"
    AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=3, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        problem_type="multi_label_classification").save_pretrained(teacher)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(teacher)
    (teacher / "training_args.json").write_text(json.dumps({"max_length": 32, "threshold": 0.4}))
    rows = [(label if label in labels else "", text) for label, text in emotion_rows("train", 120)]
    train = write_tsv(tmp_path / "train.tsv", [(f"{label},joy" if i % 3 == 0 and label else label, text)
                                               for i, (label, text) in enumerate(rows)])
    unlabelled = tmp_path / "unlabelled.txt"
    unlabelled.write_text("".join(f"{text}\n" for _, text in emotion_rows("train", 200)[120:]), encoding="utf-8")
    student = tmp_path / "student"
    result = run_script("distill_plm.py", "--teacher_fn", teacher, "--model_fn", student, "--train_fn", train,
                        "--unlabeled_fn", unlabelled, "--max_steps", 4, "--batch_size", 16, "--max_length", 32)
    assert "BCE to sigmoid" in result.stderr
    config = json.loads((student / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and config["num_hidden_layers"] == 1  # half of 2
    record = json.loads((student / "training_args.json").read_text())
    assert record["multi_label"] and 0 < record["threshold"] < 1 and record["distillation"]["n_unlabeled"] == 80


def test_student_layers_above_the_teachers_is_one_line(tmp_path, tiny_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    teacher = tmp_path / "teacher"
    AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2, id2label={0: "no", 1: "yes"},
                                                       label2id={"no": 0, "yes": 1}).save_pretrained(teacher)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(teacher)
    (teacher / "training_args.json").write_text("{}")
    train = write_tsv(tmp_path / "train.tsv", [("no", "a text"), ("yes", "another")])
    result = run_script("distill_plm.py", "--teacher_fn", teacher, "--model_fn", tmp_path / "student",
                        "--train_fn", train, "--student_layers", 2, check=False)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "--student_layers 2" in result.stderr and "has 2 layers; choose 1" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["teacher", "train.tsv"]  # nothing written


def test_a_training_label_the_teacher_lacks_names_its_line(tmp_path):
    from data_load import load_splits
    from utils.errors import UserError
    train = write_tsv(tmp_path / "train.tsv", [("joy", "a"), ("sadness", "b"), ("anger", "c"), ("joy", "d")])
    options = dataclasses.replace(data_options(train_fn=str(train)), classes=("joy", "sadness"),
                                  classes_of="the teacher T")
    with pytest.raises(UserError, match=r"train.tsv:3: label 'anger' never occurs in the teacher T's labels"):
        load_splits(options)
    # the teacher's classes, in its order, also one the data lacks
    options = dataclasses.replace(options, classes=("sadness", "anger", "joy", "love"))
    assert load_splits(options).labels == ["sadness", "anger", "joy", "love"]


def test_model_fn_that_is_an_input_is_refused_and_kept(tmp_path, tiny_model, monkeypatch):
    """--model_fn naming the teacher, the model a run starts from, or the directory holding its data: the finished
    run would replace that directory (the teacher by its student, its exports removed). Refused in one line
    before anything is read or written, by the scripts' own main() in this process."""
    import distill_plm
    import finetune_plm_native
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from utils.errors import UserError
    teacher = tmp_path / "teacher"
    AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2, id2label={0: "no", 1: "yes"},
                                                       label2id={"no": 0, "yes": 1}).save_pretrained(teacher)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(teacher)
    (teacher / "training_args.json").write_text("{}")
    (teacher / "model.onnx").write_bytes(b"an export")
    train = write_tsv(teacher / "train.tsv", [("no", "a text"), ("yes", "another")] * 10)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    for main, argv, flag in [
            (distill_plm.main, ["--teacher_fn", teacher, "--model_fn", teacher], f"is --teacher_fn {teacher}"),
            (distill_plm.main, ["--teacher_fn", teacher, "--model_fn", f"{teacher}/"], f"is --teacher_fn {teacher}"),
            (finetune_plm_native.main, ["--pretrained_model_name", teacher, "--model_fn", teacher],
             f"is --pretrained_model_name {teacher}"),
            (finetune_plm_native.main, ["--model_fn", teacher], f"holds --train_fn {train}")]:
        monkeypatch.setattr("sys.argv", ["script", "--train_fn", str(train), *map(str, argv)])
        with pytest.raises(UserError) as refused:
            main()
        assert str(refused.value) == (f"--model_fn {argv[-1]}: the finished run replaces this directory, which {flag}: "
                                      "choose another --model_fn")
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before
