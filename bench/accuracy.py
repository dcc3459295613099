"""Accuracy report: fine-tuning with default flags against two baselines, on real corpora.

    python bench/accuracy.py                  # every dataset, subset sizes below; writes docs/accuracy.md
    python bench/accuracy.py --quick          # tiny subsets of two datasets, one epoch: proves it runs
    python bench/accuracy.py --datasets emotion cola --out /tmp/accuracy.md

Per dataset, in one run, on the same train/evaluation split:
  tfidf    TF-IDF of word 1-2-grams and character 2-5-grams + logistic regression
  frozen   the pretrained encoder's mean-pooled features (no fine-tuning) + logistic regression
  native   finetune_plm_native.py with default flags
  hf       finetune_plm_hf.py with default flags
The trainers pick their best epoch on 10% of the training subset (their default); the evaluation
split is only their --test_fn. Published figures are listed beside, not measured here."""
import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, SHARED_DATA, _sample, machine, require_shared, table

# name: (train subset, eval subset, metrics, published reference)
PLAN = {
    "emotion": (16000, None, ["accuracy", "macro_f1"], "DistilBERT 92.7% acc"),
    "sst2": (8000, None, ["accuracy"], "BERT-base ~93% acc"),
    "cola": (None, None, ["mcc"], "BERT-base MCC 52-60"),
    "mrpc": (None, None, ["accuracy", "f1"], "BERT-base F1 ~89"),
    "ag_news": (None, None, ["accuracy"], "BERT-base ~94-95% (full 120k train)"),
    "nsmc": (10000, 5000, ["accuracy"], "KcBERT-base 89.6%, KoELECTRA-base ~90.6%"),
    "korean_hate_speech": (None, None, ["macro_f1"], "KcBERT-base hate macro-F1 ~0.6-0.7 (reported)"),
}
QUICK = {"emotion": (200, 100), "mrpc": (200, 100)}


def load(name, n_train, n_eval, seed=0):
    """(train rows, eval rows); a row is (label, text, pair or None)."""
    d = SHARED_DATA / name
    if name == "emotion":
        def read(split):
            lines = (d / f"{split}.txt").read_text(encoding="utf-8").splitlines()[1:]
            return [(l.rsplit(";", 1)[1], l.rsplit(";", 1)[0], None) for l in lines]
        train, test = read("train"), read("val")
    elif name == "sst2":
        def read(split):
            rows = list(csv.reader(open(d / f"{split}.tsv", encoding="utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE))
            return [(r[1], r[0].strip(), None) for r in rows[1:]]
        train, test = read("train"), read("dev")
    elif name == "cola":
        def read(split):
            rows = csv.reader(open(d / "cola_public" / "raw" / f"in_domain_{split}.tsv", encoding="utf-8"),
                              delimiter="\t", quoting=csv.QUOTE_NONE)
            return [(r[1], r[3], None) for r in rows]
        train, test = read("train"), read("dev")
    elif name == "mrpc":
        def read(split):
            rows = list(csv.reader(open(d / f"msr_paraphrase_{split}.txt", encoding="utf-8-sig"), delimiter="\t",
                                   quoting=csv.QUOTE_NONE))
            return [(r[0], r[3], r[4]) for r in rows[1:]]
        train, test = read("train"), read("test")
    elif name == "ag_news":
        rows = [(r[0], r[1], r[2].replace("\\", " ")) for r in csv.reader(open(d / "test.csv", encoding="utf-8"))]
        from sklearn.model_selection import train_test_split
        train, test = train_test_split(rows, test_size=0.2, random_state=seed, stratify=[r[0] for r in rows])
        rows = None
    elif name == "nsmc":
        def read(split):
            lines = (d / f"ratings_{split}.txt").read_text(encoding="utf-8").splitlines()[1:]
            return [(f[2], f[1], None) for f in (l.split("\t") for l in lines) if f[1].strip()]
        train, test = read("train"), read("test")
    elif name == "korean_hate_speech":
        def read(split):
            lines = (d / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
            return [(f[3], f[0], None) for f in (l.split("\t") for l in lines)]
        train, test = read("train"), read("dev")
    else:
        raise ValueError(name)
    clean = [(label, text.replace("\t", " "), pair.replace("\t", " ") if pair else None)
             for label, text, pair in _sample(train, n_train, seed)]
    return clean, [(l, t.replace("\t", " "), p.replace("\t", " ") if p else None) for l, t, p in
                   _sample(test, n_eval, seed + 1)]


def write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for label, text, pair in rows:
            f.write(f"{label}\t{text}\t{pair}\n" if pair is not None else f"{label}\t{text}\n")
    return path


def score(gold, predicted, metric, positive="1"):
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
    if metric == "accuracy":
        return accuracy_score(gold, predicted)
    if metric == "macro_f1":
        return f1_score(gold, predicted, average="macro")
    if metric == "mcc":
        return matthews_corrcoef(gold, predicted)
    if metric == "f1":
        return f1_score(gold, predicted, pos_label=positive)
    raise ValueError(metric)


def tfidf(train, test):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.feature_extraction.text import TfidfVectorizer
    joined = lambda rows: [t if p is None else f"{t} || {p}" for _, t, p in rows]  # noqa: E731
    model = make_pipeline(make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                                     TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True,
                                                     min_df=2, max_features=300_000)),
                          LogisticRegression(max_iter=2000, C=10))
    model.fit(joined(train), [r[0] for r in train])
    return list(model.predict(joined(test)))


def frozen(train, test, batch_size=64):
    """Mean-pooled features of the pretrained encoder (its own sentence-embedding pooling) + LR."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel, AutoTokenizer
    from utils.model import default_model_path
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    encoder = AutoModel.from_pretrained(default_model_path()).eval()

    @torch.inference_mode()
    def features(rows):
        out = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            pairs = [p for _, _, p in chunk] if chunk[0][2] is not None else None
            batch = tokenizer([t for _, t, _ in chunk], pairs, truncation=True, max_length=128, padding=True,
                              return_tensors="pt")
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
        return np.concatenate(out)
    classifier = LogisticRegression(max_iter=3000, C=1.0).fit(features(train), [r[0] for r in train])
    return list(classifier.predict(features(test)))


def finetune(script, train_fn, test_fn, directory, extra):
    model_fn = Path(directory) / script.split("_")[-1].replace(".py", "")
    subprocess.run([sys.executable, str(ROOT / script), "--model_fn", str(model_fn), "--train_fn", str(train_fn),
                    "--test_fn", str(test_fn), "--n_errors", "0", *extra], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    predicted = subprocess.run([sys.executable, str(ROOT / "classify_plm.py"), "--model_fn", str(model_fn)],
                               input="".join(line.split("\t", 1)[1] for line in open(test_fn, encoding="utf-8")),
                               capture_output=True, text=True, check=True, cwd=ROOT).stdout.splitlines()
    return [line.split("\t")[0] for line in predicted]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", choices=list(PLAN))
    p.add_argument("--quick", action="store_true", help="tiny subsets of emotion and MRPC, one epoch")
    p.add_argument("--out", default=str(ROOT / "docs" / "accuracy.md"))
    args = p.parse_args()
    require_shared()
    datasets = args.datasets or (list(QUICK) if args.quick else list(PLAN))
    extra = ["--n_epochs", "1"] if args.quick else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in datasets:
            n_train, n_eval, metrics, published = PLAN[name]
            if args.quick:
                n_train, n_eval = QUICK.get(name, (200, 100))
            train, test = load(name, n_train, n_eval)
            train_fn, test_fn = write(Path(tmp) / f"{name}.train.tsv", train), write(Path(tmp) / f"{name}.test.tsv", test)
            gold = [r[0] for r in test]
            systems = {"tfidf": lambda: tfidf(train, test), "frozen": lambda: frozen(train, test),
                       "native": lambda: finetune("finetune_plm_native.py", train_fn, test_fn, tmp + "/" + name, extra),
                       "hf": lambda: finetune("finetune_plm_hf.py", train_fn, test_fn, tmp + "/" + name, extra)}
            for metric in metrics:
                rows.append({"dataset": name, "train/eval": f"{len(train)}/{len(test)}", "metric": metric})
            for system, run in systems.items():
                started = time.time()
                predicted = run()
                seconds = time.time() - started
                for row in rows[-len(metrics):]:
                    row[system] = f"{score(gold, predicted, row['metric']):.4f}"
                    row[f"{system} s"] = f"{seconds:.0f}"
                print(f"{name} {system}: {[rows[-len(metrics) + i][system] for i in range(len(metrics))]} "
                      f"in {seconds:.0f} s", file=sys.stderr)
            for row in rows[-len(metrics):]:
                row["published (not measured here)"] = published
    columns = ["dataset", "train/eval", "metric", "tfidf", "frozen", "native", "hf", "tfidf s", "frozen s",
               "native s", "hf s", "published (not measured here)"]
    report = table(rows, columns)
    print(report)
    command = "python bench/accuracy.py" + (" --quick" if args.quick else "") + (
        f" --datasets {' '.join(args.datasets)}" if args.datasets else "")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(f"# Accuracy report\n\nCommand: `{command}`\n\nMachine: {machine()}\n\n"
                              f"Fine-tuned rows use default flags; times are seconds of training and "
                              f"prediction.\n\n{report}\n")


if __name__ == "__main__":
    main()
