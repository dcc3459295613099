"""Issue 29: cross-validation (--cv), likely label errors (find_label_errors.py) and which texts to label next
(classify_plm.py --select), on a toy set a tiny model separates: planted label errors, stratified folds that
partition the rows, out-of-fold probabilities, a killed --cv resumed, and every refusal."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, SCRIPT_ENV, classifier_in_process, data_options, run_script

WORDS = {"pos": ["good", "great", "excellent", "wonderful", "nice", "lovely"],
         "neg": ["bad", "awful", "terrible", "poor", "horrible", "nasty"],
         "neu": ["table", "chair", "window", "door", "paper", "street"]}
LABELS = sorted(WORDS)
N_ROWS = 180
PLANTED = 9  # 5% of the rows, relabelled to another class


def toy_rows(n=N_ROWS, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        rows.append((label, " ".join(rng.choice(WORDS[label]) for _ in range(4)) + f" number {i}"))
    return rows


def planted_errors(rows, seed=1):
    """rows with PLANTED labels changed to another class; the 1-based lines changed."""
    rng = random.Random(seed)
    changed = sorted(rng.sample(range(len(rows)), PLANTED))
    noisy = list(rows)
    for i in changed:
        label, text = rows[i]
        noisy[i] = (rng.choice([other for other in LABELS if other != label]), text)
    return noisy, [i + 1 for i in changed]


def write_rows(path, rows):
    path.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    return path


# --few_shot off: these small sets would take the few-shot recipe's pair phase, seconds a fold and not the subject here
TRAIN_FLAGS = ["--n_epochs", 6, "--lr", "5e-3", "--max_length", 16, "--batch_size", 16, "--few_shot", "off"]


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory, tiny_model):
    """One --cv 3 --cv_final run of the native trainer on the toy set with planted errors (its folds are
    subprocesses, as a user's would be), then find_label_errors.py --fix drop on it."""
    directory = tmp_path_factory.mktemp("cv")
    noisy, planted = planted_errors(toy_rows())
    train_fn = write_rows(directory / "noisy.tsv", noisy)
    model_fn = directory / "cv"
    run_script("finetune_plm_native.py", "--model_fn", model_fn, "--train_fn", train_fn, "--cv", 3, "--cv_final",
               "--pretrained_model_name", tiny_model, *TRAIN_FLAGS)
    found = run_script("find_label_errors.py", "--oof", model_fn / "oof_predictions.parquet", "--fix", "drop",
                       "--output_fn", directory / "issues")
    return {"dir": directory, "train_fn": train_fn, "model_fn": model_fn, "planted": planted, "found": found,
            "issues": directory / "issues"}


# Folds: a partition, stratified, and what each fold's model trains on

def test_folds_partition_the_rows_stratified_and_never_train_on_their_own_fold(tmp_path):
    from data_load.splits import load_splits
    train_fn = write_rows(tmp_path / "toy.tsv", toy_rows())
    held_out = []
    for fold in range(4):
        splits = load_splits(data_options(train_fn=str(train_fn), cv=4, cv_fold=fold))
        train, valid, test = (set(split.indices.tolist()) for split in (splits.train, splits.valid, splits.test))
        assert not train & test and not valid & test  # neither trained nor validated on the fold it predicts
        assert len(train | valid | test) == N_ROWS
        codes = [label for label in splits.test.column("label").to_pylist()]
        assert all(codes.count(label) == N_ROWS // 3 // 4 or codes.count(label) == N_ROWS // 3 // 4 + 1
                   for label in LABELS)  # 15 of each class: every fold holds its share (stratified)
        held_out.append(test)
    assert sorted(row for fold in held_out for row in fold) == list(range(N_ROWS))  # each row in exactly one fold


def test_multi_label_folds_spread_every_label(tmp_path):
    from data_load.folds import iterative_stratification
    rng = np.random.default_rng(0)
    matrix = rng.random((300, 6)) < [0.5, 0.3, 0.1, 0.05, 0.04, 0.2]
    folds = iterative_stratification(matrix, 4, seed=0)
    assert set(folds.tolist()) == {0, 1, 2, 3}
    for label in range(6):
        per_fold = [matrix[folds == fold, label].sum() for fold in range(4)]
        assert max(per_fold) - min(per_fold) <= 2, (label, per_fold)  # in proportion, up to rounding
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 3


# The --cv run, its out-of-fold probabilities and the label errors found in them

@pytest.mark.slow
def test_cv_writes_every_rows_out_of_fold_probabilities_and_the_fold_scores(cv_run):
    import pyarrow.parquet as pq
    model_fn = cv_run["model_fn"]
    oof = pq.read_table(model_fn / "oof_predictions.parquet")
    assert sorted(oof.column("line").to_pylist()) == list(range(1, N_ROWS + 1))
    probabilities = np.stack(oof.column("probabilities").to_numpy(zero_copy_only=False))
    assert probabilities.shape == (N_ROWS, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    meta = json.loads(oof.schema.metadata[b"finetune_plm"])
    assert meta["labels"] == LABELS and meta["folds"] == 3
    # every row's probabilities come from the one fold model that held it out
    lines, folds = np.array(oof.column("line").to_pylist()), np.array(oof.column("fold").to_pylist())
    for fold in range(3):
        record = json.loads((model_fn / "cv_folds" / f"fold-{fold}" / "training_args.json").read_text())
        assert record["cv_fold"] == fold
        assert record["n_train"] + record["n_valid"] == N_ROWS - (folds == fold).sum()
        with np.load(model_fn / "cv_folds" / f"fold-{fold}" / "cv_held_out.npz") as held_out:
            assert sorted(held_out["rows"] + 1) == sorted(lines[folds == fold])
    scores = json.loads((model_fn / "cv_metrics.json").read_text())
    accuracies = [fold["accuracy"] for fold in scores["folds"]]
    assert scores["mean"]["accuracy"] == pytest.approx(np.mean(accuracies))
    assert scores["std"]["accuracy"] == pytest.approx(np.std(accuracies, ddof=1))
    assert scores["mean"]["accuracy"] > 0.8  # the toy set is separable: the folds learned it
    # --cv_final: an ordinary model on all the data, which classify_plm.py reads
    assert json.loads((model_fn / "training_args.json").read_text())["n_train"] == N_ROWS - N_ROWS // 10
    assert (model_fn / "model.safetensors").exists()
    assert not (model_fn / "cv_folds" / "fold-0" / "model.safetensors").exists()  # the folds' weights went


@pytest.mark.slow
def test_planted_label_errors_are_found_first(cv_run):
    import csv
    with open(cv_run["issues"] / "label_issues.tsv", encoding="utf-8") as f:
        issues = list(csv.DictReader(f, delimiter="\t"))
    top = [int(row["line"]) for row in issues[:PLANTED]]
    assert len(set(top) & set(cv_run["planted"])) >= PLANTED - 2, (top, cv_run["planted"])
    original = dict(toy_rows()[line - 1] [::-1] for line in cv_run["planted"])
    for row in issues[:PLANTED]:
        if int(row["line"]) in cv_run["planted"]:  # the suggestion is the label before it was changed
            assert row["suggested"] == original[row["text"]]
    assert [float(row["quality"]) for row in issues] == sorted(float(row["quality"]) for row in issues)
    assert (cv_run["issues"] / "label_error_counts.png").stat().st_size > 0
    with open(cv_run["issues"] / "label_error_counts.tsv", encoding="utf-8") as f:
        counts = list(csv.DictReader(f, delimiter="\t"))
    assert len(counts) == 6 and sum(int(row["estimated"]) for row in counts) > 0


@pytest.mark.slow
def test_fix_drop_trains_and_relabel_restores_the_labels(cv_run, tiny_model, tmp_path):
    fixed_fn = cv_run["issues"] / "noisy.fixed.tsv"
    flagged = {int(row.split("\t")[2]) for row in
               (cv_run["issues"] / "label_issues.tsv").read_text().splitlines()[1:]}
    original = cv_run["train_fn"].read_text().splitlines()
    assert fixed_fn.read_text().splitlines() == [line for i, line in enumerate(original, 1) if i not in flagged]
    run_script("finetune_plm_native.py", "--model_fn", tmp_path / "fixed", "--train_fn", fixed_fn,
               "--pretrained_model_name", tiny_model, "--max_steps", 2, "--max_length", 16, "--few_shot", "off")
    relabelled = tmp_path / "relabelled.tsv"
    run_script("find_label_errors.py", "--oof", cv_run["model_fn"] / "oof_predictions.parquet", "--fix", "relabel",
               "--output_fn", tmp_path / "issues", "--fixed_fn", relabelled)
    clean = [f"{label}\t{text}" for label, text in toy_rows()]
    restored = relabelled.read_text().splitlines()
    assert len(restored) == N_ROWS
    assert sum(restored[line - 1] == clean[line - 1] for line in cv_run["planted"]) >= PLANTED - 2
    assert cv_run["train_fn"].read_text().splitlines() == original  # the input is never changed


@pytest.mark.slow
def test_a_killed_cv_resumes_with_the_unfinished_folds(tmp_path, tiny_model):
    """With the Trainer loop (the other tests use the native one): --cv is the same in both."""
    train_fn = write_rows(tmp_path / "toy.tsv", toy_rows(90))
    model_fn = tmp_path / "cv"
    argv = [sys.executable, str(ROOT / "finetune_plm_hf.py"), "--model_fn", str(model_fn), "--train_fn",
            str(train_fn), "--cv", "3", "--pretrained_model_name", str(tiny_model), "--max_steps", "2", "--few_shot", "off",
            "--max_length", "16"]
    first_fold = tmp_path / ".cv.partial" / "cv_folds" / "fold-0" / "cv_held_out.npz"
    run = subprocess.Popen(argv, cwd=ROOT, env=SCRIPT_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not first_fold.exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.kill(run.pid, signal.SIGKILL)  # the fold it was training dies with it (start_worker)
    run.wait()
    assert first_fold.exists() and not model_fn.exists()
    refused = run_script("finetune_plm_hf.py", *argv[2:], check=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = run_script("finetune_plm_hf.py", *argv[2:], "--resume")
    assert "continuing: folds 0 are done" in resumed.stderr
    assert "***** fold 0 of 3" not in resumed.stderr and "***** fold 1 of 3" in resumed.stderr
    assert (model_fn / "oof_predictions.parquet").exists() and not (tmp_path / ".cv.partial").exists()


# Which texts to label next

@pytest.mark.slow
def test_select_returns_the_least_certain_texts_and_honours_diversity(cv_run, tmp_path, tiny_model):
    from scoring.uncertainty import uncertainty
    model_fn = cv_run["model_fn"]
    rng = random.Random(5)
    texts = [" ".join(rng.choice(WORDS[rng.choice(LABELS)]) for _ in range(3)) + f" item {i}" for i in range(40)]
    classifier = classifier_in_process(model_fn)
    margin = uncertainty(classifier.predict([(text, None) for text in texts]).probabilities, "margin")
    # the most uncertain text, 20 times over: plain margin sampling takes its copies, --diversity one of them
    doubtful = texts[int(np.argmax(margin))]
    pool = texts + [doubtful] * 20
    pool_fn = tmp_path / "pool.txt"
    pool_fn.write_text("\n".join(pool) + "\n", encoding="utf-8")
    import csv
    picked = {}
    for name, flags in (("margin", ["--strategy", "margin"]), ("entropy", ["--strategy", "entropy"]),
                        ("diverse", ["--diversity"]), ("random", ["--strategy", "random"])):
        out = tmp_path / f"{name}.csv"
        run_script("classify_plm.py", "--model_fn", model_fn, "--input_fn", pool_fn, "--output_fn", out,
                   "--select", 8, *flags)
        with open(out, encoding="utf-8") as f:
            picked[name] = list(csv.DictReader(f))
    all_margin = uncertainty(classifier.predict([(text, None) for text in pool]).probabilities, "margin")
    chosen = np.array([int(row["line"]) - 1 for row in picked["margin"]])
    others = np.setdiff1d(np.arange(len(pool)), chosen)
    assert all_margin[chosen].min() >= all_margin[others].max() - 1e-5  # the least certain, whatever the batches
    assert [row["label"] for row in picked["margin"]] == [""] * 8 and picked["margin"][0]["predicted"] in LABELS
    assert sum(row["text"] == doubtful for row in picked["margin"]) == 8
    assert sum(row["text"] == doubtful for row in picked["diverse"]) == 1
    assert len({row["cluster"] for row in picked["diverse"]}) == 8
    assert len(picked["entropy"]) == 8 and len(picked["random"]) == 8
    assert sum(row["text"] == doubtful for row in picked["random"]) < 8
    # labelled (here with the predicted labels), the file is training data as it is
    labelled = tmp_path / "labelled.csv"
    with open(tmp_path / "random.csv", encoding="utf-8") as f, open(labelled, "w", encoding="utf-8", newline="") as out:
        rows = list(csv.DictReader(f))
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "label": LABELS[i % 3]} for i, row in enumerate(rows))
    run_script("finetune_plm_native.py", "--model_fn", tmp_path / "next", "--train_fn", labelled,
               "--pretrained_model_name", tiny_model, "--max_steps", 1, "--valid_ratio", 0.4, "--max_length", 16)


def test_uncertainty_scores_order_the_probabilities():
    from scoring.uncertainty import select, uncertainty
    probabilities = np.array([[0.98, 0.01, 0.01], [0.4, 0.35, 0.25], [0.34, 0.33, 0.33], [0.6, 0.4, 0.0]])
    assert list(np.argsort(-uncertainty(probabilities, "margin"))) == [2, 1, 3, 0]
    assert list(np.argsort(-uncertainty(probabilities, "entropy"))) == [2, 1, 3, 0]
    multi = np.array([[0.9, 0.1], [0.55, 0.2], [0.2, 0.05]])
    assert list(np.argsort(-uncertainty(multi, "margin", multi_label=True))) == [1, 2, 0]  # the label nearest 0.5 is 0.4, 0.05, 0.3 from it
    chosen, clusters = select(uncertainty(probabilities, "margin"), 2)
    assert list(chosen) == [2, 1] and clusters is None


# Refusals: one line, exit 2, nothing written

def test_cv_refusals(tmp_path, tiny_model):
    train_fn = write_rows(tmp_path / "toy.tsv", toy_rows(30))
    common = ["--train_fn", train_fn, "--pretrained_model_name", tiny_model, "--max_steps", 1]
    cases = [(["--cv", 1], "--cv: 1 is out of range"),
             (["--cv", 11], "the class 'neg' has only 10 rows"),
             (["--cv_final"], "--cv_final is for cross-validation: add --cv K"),
             (["--cv", 3, "--cv_fold", 3], "folds are numbered 0 to 2"),
             (["--cv", 3, "--regression"], "--cv: out-of-fold probabilities are for classes")]
    for flags, message in cases:
        # refused before any fold starts: in this process (a --cv run otherwise gets one of its own)
        result = run_script("finetune_plm_native.py", "--model_fn", tmp_path / "model", *common, *flags, check=False,
                            in_process=True)
        assert result.returncode == 2 and message in result.stderr, (flags, result.stderr[-500:])
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert sorted(path.name for path in tmp_path.iterdir()) == ["toy.tsv"]


@pytest.mark.slow
def test_oof_of_other_data_and_empty_pool_are_refused(cv_run, tmp_path):
    other = write_rows(tmp_path / "other.tsv", toy_rows(60, seed=9))
    oof = cv_run["model_fn"] / "oof_predictions.parquet"
    result = run_script("find_label_errors.py", "--oof", oof, "--train_fn", other, "--fix", "drop",
                        "--output_fn", tmp_path / "out", check=False)
    assert result.returncode == 2 and "was made from other data than" in result.stderr
    assert not (tmp_path / "out").exists()
    not_oof = run_script("find_label_errors.py", "--oof", other, check=False)
    assert not_oof.returncode == 2 and "not a readable Parquet file" in not_oof.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    result = run_script("classify_plm.py", "--model_fn", cv_run["model_fn"], "--input_fn", empty, "--output_fn",
                        tmp_path / "next.csv", "--select", 5, check=False)
    assert result.returncode == 2 and "empty.txt: no texts in it" in result.stderr
    assert not (tmp_path / "next.csv").exists()


def test_multi_label_issues_find_the_missing_and_extra_labels():
    from scoring.label_issues import find_issues
    rng = np.random.default_rng(0)
    truth = rng.random((200, 4)) < 0.3
    probabilities = np.where(truth, rng.uniform(0.75, 0.99, truth.shape), rng.uniform(0.01, 0.25, truth.shape))
    given = truth.copy()
    wrong = [3, 50, 120, 177]
    given[wrong, 0] = ~given[wrong, 0]  # a label missing or one too many
    issues = find_issues([list(np.flatnonzero(row)) for row in given], probabilities, True, list("abcd"))
    assert set(issues.flagged[:len(wrong)].tolist()) == set(wrong)
    assert (issues.suggested[wrong] == truth[wrong]).all()
    assert {row["label"] for row in issues.counts} == set("abcd")
    assert issues.counts[0]["label"] == "a"


@pytest.mark.parametrize("name, text, flags, expected", [
    ("t.csv", 'text,label,id\n"a, b",pos,1\nc,neg,2\n"d\nstill d",pos,3\ne,neg,4\n', {},
     'text,label,id\n"a, b",neg,1\n"d\nstill d",neg,3\ne,neg,4\n'),
    ("t.jsonl", '{"text": "a", "label": "pos"}\n{"text": "c", "label": "neg"}\n{"text": "e", "label": ["x"]}\n',
     {}, '{"text": "a", "label": "neg"}\n{"text": "e", "label": ["y"]}\n'),
    ("t.tsv", "pos\ta\r\nneg\tc\r\npos\te\r\n", {}, "neg\ta\r\npos\te\r\n"),
    ("t.tsv", "id\tsentence\tgold\n1\ta\tpos\n2\tc\tneg\n", {"text_column": "sentence", "label_column": "gold"},
     "id\tsentence\tgold\n1\ta\tneg\n"),
])
def test_fixed_copy_keeps_the_files_format(tmp_path, name, text, flags, expected):
    from data_load.rewrite import write_fixed_copy
    source = tmp_path / name
    source.write_bytes(text.encode())
    records = {"t.csv": {2: "neg", 3: None, 4: "neg"}, "t.jsonl": {1: "neg", 2: None, 3: ["y"]}}
    changes = records.get(name, {1: "neg", 2: None} if "id" not in text else {2: "neg", 3: None})
    target = tmp_path / f"fixed_{name}"
    write_fixed_copy(source, target, flags, changes)
    assert target.read_bytes().decode() == expected
    assert source.read_bytes().decode() == text
