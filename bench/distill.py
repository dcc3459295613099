"""Distillation on emotion: the default 6-layer model fine-tuned as teacher, a 3-layer student distilled from it
with the rest of the training file as unlabelled text, and the same 3-layer student trained on the labels alone.

    python bench/distill.py                   # ~25 minutes on 2 cores; keeps the result in docs/accuracy.json
                                              # and rewrites docs/accuracy.md with it
    python bench/distill.py --quick           # tiny subsets, one epoch: proves it runs; keeps nothing

  teacher      finetune_plm_native.py, default flags (all-MiniLM-L6-v2, 6 layers), on a seeded 4,000 lines of
               emotion's train.txt
  distilled    distill_plm.py --student_layers 3 (the teacher's layers 0, 2, 5) on the same 4,000 labelled
               lines plus the other 12,000 lines of train.txt as unlabelled text (their labels dropped)
  labels only  distill_plm.py --student_layers 3 --soft_weight 0: the same student, the same initialisation,
               trained on the 4,000 labelled lines without the teacher in its loss
Every run picks its best epoch on 10% of the 4,000 labelled lines (the default) and is scored once on
emotion's val.txt (2,000 lines; the corpus's test.txt is held back, see ../shared/data/emotion/README.md) by
its --test_fn evaluation. Classify speed as bench/classify_speed.py measures it (classify_plm.py on 2,000
val.txt sentences, seconds without model loading, median of 3), torch fp32 and onnx int8 after
export_plm.py. Training seconds: the whole run, on 2 threads."""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, emotion, git_commit, machine, median, require_shared, save_result, table, write_tsv

N_LABELLED = 4000
STUDENT_LAYERS = 3
SPEED_SYSTEMS = ["torch fp32", "onnx int8"]
TARGETS = "the distilled student within 1 point of the teacher's accuracy, above the labels-only student, and " \
          "at least 1.8x the teacher's classify speed (torch fp32 and onnx int8)"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="200 labelled, 400 unlabelled, 100 evaluation lines, one "
                                                        "epoch, one speed repeat; keeps nothing")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    require_shared()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), args.quick, env)
    print(render(result))
    if not args.quick:
        save_result("distillation", result)
        # docs/accuracy.md is bench/accuracy.py's to write: it renders this study with render() below
        subprocess.run([sys.executable, str(ROOT / "bench" / "accuracy.py"), "--render_only"], check=True)


def run(directory, quick, env):
    rows = emotion("train")
    order = random.Random(0).sample(range(len(rows)), len(rows))
    n_labelled, n_unlabelled, n_eval = (200, 400, 100) if quick else (N_LABELLED, len(rows) - N_LABELLED, None)
    labelled = [rows[i] for i in order[:n_labelled]]
    unlabelled = [rows[i][1] for i in order[n_labelled:n_labelled + n_unlabelled]]
    test = emotion("val", n_eval, seed=3)
    train_fn, test_fn = write_tsv(directory / "train.tsv", labelled), write_tsv(directory / "val.tsv", test)
    unlabelled_fn = directory / "unlabelled.txt"
    unlabelled_fn.write_text("".join(f"{text}\n" for text in unlabelled), encoding="utf-8")
    common = ["--train_fn", str(train_fn), "--test_fn", str(test_fn), "--n_errors", "0",
              *(["--n_epochs", "1"] if quick else [])]
    teacher = directory / "teacher"
    student = ["distill_plm.py", "--teacher_fn", str(teacher), "--student_layers", str(STUDENT_LAYERS)]
    plan = {"teacher": ("teacher: finetune_plm_native.py, defaults", ["finetune_plm_native.py"]),
            "distilled": (f"distill_plm.py --student_layers {STUDENT_LAYERS} --unlabeled_fn (the other "
                          f"{len(unlabelled):,} lines)", [*student, "--unlabeled_fn", str(unlabelled_fn)]),
            "labels_only": (f"distill_plm.py --student_layers {STUDENT_LAYERS} --soft_weight 0 (labels alone)",
                            [*student, "--soft_weight", "0"])}
    texts = [text for _, text in test]
    repeats = 1 if quick else 3
    result = {"train": len(labelled), "unlabelled": len(unlabelled), "eval": len(test), "commit": git_commit(),
              "machine": machine(), "metrics": ["accuracy", "macro_f1"], "repeats": repeats, "systems": {}}
    for name, (label, command) in plan.items():
        model_fn = directory / name
        started = time.time()
        done = subprocess.run([sys.executable, str(ROOT / command[0]), "--model_fn", str(model_fn), *command[1:],
                               *common], cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        seconds = time.time() - started
        metrics = json.loads((model_fn / "metrics.json").read_text())["test"]
        layers = json.loads((model_fn / "config.json").read_text())["num_hidden_layers"]
        print(f"{name}: accuracy {metrics['accuracy']:.4f} in {seconds:.0f} s", file=sys.stderr, flush=True)
        result["systems"][name] = {"label": label, "layers": layers, "seconds": round(seconds, 1),
                                   "scores": {metric: metrics[metric] for metric in result["metrics"]},
                                   "speed": speed(model_fn, texts, env, repeats),
                                   "commit": result["commit"], "machine": result["machine"]}
    return result


def speed(model_fn, texts, env, repeats):
    """Sentences per second of classify_plm.py (bench/classify_speed.py's measurement) per SPEED_SYSTEMS."""
    from classify_speed import run as timed
    subprocess.run([sys.executable, str(ROOT / "export_plm.py"), "--model_fn", str(model_fn)], check=True, env=env,
                   cwd=ROOT, capture_output=True)
    return {system: round(len(texts) / median([timed(system, model_fn, texts, env)[0] for _ in range(repeats)]), 1)
            for system in SPEED_SYSTEMS}


# What the measured rows say (commit edfc804's run; edit when the study is run again)
NOTE = """The students start from the teacher's fine-tuned weights (layers 0, 2, 5, embeddings and head), so the
labels-only student is also 3 more epochs of fine-tuning on the teacher's 4,000 lines: it passed the teacher
too (0.9045 against 0.8920). The distilled student, which also learned the teacher's outputs on the 12,000
unlabelled lines, scored 1.05 points above it (the standard error of an accuracy on 2,000 lines is about 0.65
points). Speed: half the layers doubled torch fp32 (2.09x); onnx int8 gained less, probably because the
per-sentence costs outside the layers (tokenizing, the session's own work) weigh more against int8 layers (not
measured apart): the distilled
student measured 1.66x, the labels-only one, the same architecture and export, 1.89x in the same run, so the
int8 figure is about 1.7-1.9x and this run misses the 1.8x target for the distilled student."""


def render(result):
    """The study's table and whether the targets are met, for docs/accuracy.md (bench/accuracy.py renders it
    from docs/accuracy.json)."""
    systems = result["systems"]
    teacher = systems["teacher"]
    rows = []
    for name, run in systems.items():
        row = {"system": run["label"], "layers": run["layers"],
               "training texts": f"{result['train']:,}" + (f" + {result['unlabelled']:,} unlabelled"
                                                           if name == "distilled" else ""),
               "accuracy": f"{run['scores']['accuracy']:.4f}", "macro-F1": f"{run['scores']['macro_f1']:.4f}"}
        for system in SPEED_SYSTEMS:
            row[f"{system} sentences/s"] = f"{run['speed'][system]:.0f} ({run['speed'][system] / teacher['speed'][system]:.2f}x)"
        rows.append({**row, "training s": f"{run['seconds']:.0f}", "commit": run["commit"]})
    distilled, alone = systems["distilled"]["scores"]["accuracy"], systems["labels_only"]["scores"]["accuracy"]
    gap = (teacher["scores"]["accuracy"] - distilled) * 100
    ratios = {system: systems["distilled"]["speed"][system] / teacher["speed"][system] for system in SPEED_SYSTEMS}
    verdict = [f"within 1 point of the teacher: {'yes' if gap <= 1 else 'NO'} ({-gap:+.2f} points)",
               f"above the labels-only student: {'yes' if distilled > alone else 'NO'} "
               f"({(distilled - alone) * 100:+.2f} points)",
               "at least 1.8x the teacher's speed: " + ", ".join(
                   f"{system} {ratio:.2f}x{'' if ratio >= 1.8 else ' (NO)'}" for system, ratio in ratios.items())]
    return (f"Distillation (bench/distill.py): emotion, {result['train']:,} labelled lines of train.txt (seeded), "
            f"the other {result['unlabelled']:,} as unlabelled text; scored on {result['eval']:,} lines of val.txt. "
            f"Speed: classify_plm.py on those sentences, median of {result['repeats']}, ratio to the teacher.\n\n"
            + table(rows, list(rows[0])) + f"\n\nTargets ({TARGETS}): " + "; ".join(verdict) + ".\n\n" + NOTE)


if __name__ == "__main__":
    main()
