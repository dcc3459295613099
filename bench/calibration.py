"""Calibration: the expected calibration error (ECE) before and after temperature scaling (--calibrate).

    python bench/calibration.py                       # emotion and GoEmotions, writes the section in docs/accuracy.md
    python bench/calibration.py --n_train 300 --out /tmp/c.md   # a quick run

Per corpus, one run of finetune_plm_native.py with default flags plus --calibrate on a seeded subset of the
training file: the temperature is fitted on the trainer's own validation split (10% of the subset), and the
ECE before and after it is read from the model's metrics.json, on that validation split and on the evaluation
file (--test_fn), which the temperature never saw. Temperature scaling leaves single-label predictions as they
are (dividing logits by one number keeps their order); multi-label decisions are made at a threshold tuned
on the calibrated validation probabilities, which (a monotone change of each probability) picks the same
decisions up to the grid of thresholds tried."""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, SHARED_DATA, emotion, machine, require_shared, sample, table, write_section, write_tsv

CORPORA = {
    # name: (training rows, evaluation rows, trainer flags)
    "emotion": (lambda n: emotion("train", n, seed=0), lambda: emotion("val"), []),
    "goemotions": (lambda n: goemotions("train.tsv", n), lambda: goemotions("dev.tsv"),
                   ["--multi_label", "--label_separator", ",",
                    "--label_names_fn", str(SHARED_DATA / "goemotions" / "labels.txt")]),
}


def goemotions(name, n=None):
    """(label ids, text) rows of GoEmotions' tsv files (text, comma-separated label ids, comment id)."""
    rows = []
    for line in (SHARED_DATA / "goemotions" / name).read_text(encoding="utf-8").splitlines():
        text, labels, _ = line.split("\t")
        rows.append((labels, text))
    return sample(rows, n, seed=0)


def run(name, n_train, directory):
    train_rows, eval_rows, flags = CORPORA[name]
    train = write_tsv(directory / f"{name}-train.tsv", train_rows(n_train))
    test = write_tsv(directory / f"{name}-test.tsv", eval_rows())
    model = directory / name
    started = time.time()
    subprocess.run([sys.executable, str(ROOT / "finetune_plm_native.py"), "--model_fn", str(model), "--train_fn",
                    str(train), "--test_fn", str(test), "--calibrate", *flags], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    seconds = time.time() - started
    metrics = json.loads((model / "metrics.json").read_text())
    score = "micro_f1" if metrics["test"].get("multi_label") else "accuracy"
    return {"corpus": name, "train/eval": f"{len(train_rows(n_train))}/{len(eval_rows())}",
            "temperature": json.loads((model / "training_args.json").read_text())["calibration_temperature"],
            **{f"{split} ECE {when}": f"{metrics[split][key]:.4f}" for split in ("valid", "test")
               for when, key in (("before", "ece_uncalibrated"), ("after", "ece"))},
            "test score": f"{score.replace('_f1', '-F1')} {metrics['test'][score]:.4f}", "train s": round(seconds)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", nargs="+", choices=list(CORPORA), default=list(CORPORA))
    p.add_argument("--n_train", type=int, default=4000, help="training rows per corpus (seeded subset)")
    p.add_argument("--out", default=str(ROOT / "docs" / "accuracy.md"))
    args = p.parse_args()
    require_shared()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(name, args.n_train, Path(tmp)) for name in args.corpora]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    section = ("## Calibration: ECE before and after temperature scaling (bench/calibration.py)\n\n"
               f"{machine()}, commit {commit}. finetune_plm_native.py, default flags + --calibrate, "
               f"{args.n_train} seeded training rows (10% of them the validation split the temperature is fitted "
               "on); test: emotion val.txt, GoEmotions dev.tsv. ECE: 15 equal bins; single-label on the top "
               "class's probability, multi-label on every label's.\n\n" + table(rows, columns) + "\n")
    print(section)
    write_section(args.out, "calibration", section)

if __name__ == "__main__":
    main()
