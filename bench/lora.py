"""LoRA (--lora_r) against full fine-tuning, both trainers, on emotion (issue 30).

    python bench/lora.py                                  # the protocol: 4,000 seeded rows, 2 epochs, r 8 and 16
    python bench/lora.py --rows 1000 --n_epochs 1 --eval_rows 500 --trainers native   # a smaller scale
    python bench/lora.py --rows 2000 --n_epochs 1 --trainers native --malloc_mmap_threshold 131072   # live memory

For each trainer and each of full, r 8, r 16, one run of the trainer script in a process of its own on the
same seeded rows (it picks its best epoch on 10% of them, its default), scored on the emotion validation
split (--test_fn). Printed: validation accuracy, training samples/s (training rows x epochs / the epochs'
time, evaluation excluded), the peak resident memory of the process (sampled every 0.1 s), the share of
parameters trained, and the adapter's size on disk; then the ratios against full fine-tuning of the same
trainer, measured in the same run. Writes docs/accuracy.json ("lora") and prints a markdown table.

Under glibc's default allocator a training process's resident set is what the heap has grown to, not what is
live: freed activations stay mapped, and full fine-tuning and LoRA peak within 1% of each other (docs/benchmarks.md).
--malloc_mmap_threshold sets MALLOC_MMAP_THRESHOLD_ for the trainers, so that tensors above that size get pages of
their own and give them back when freed: the peak then follows the live tensors (the optimizer's state, the
gradients), at a cost in speed (page faults on every large allocation), so the samples/s of such a run are not the
trainers' own. Its rows go to docs/accuracy.json under "lora_live_memory"."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT, emotion, git_commit, machine, require_shared, save_result, table, write_tsv

SCRIPTS = {"native": "finetune_plm_native.py", "hf": "finetune_plm_hf.py"}


def run_peak_rss(command, env=None):
    """(exit code, seconds, peak RSS in MB of the process and its children), sampled every 0.1 s."""
    import psutil
    started = time.time()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=env)
    watched = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss + sum(child.memory_info().rss
                                                             for child in watched.children(recursive=True)))
        except psutil.Error:
            pass
        time.sleep(0.1)
    stderr = process.stderr.read()
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return time.time() - started, peak / 2**20


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4000, help="seeded emotion training rows")
    p.add_argument("--n_epochs", type=int, default=2)
    p.add_argument("--ranks", default="8,16")
    p.add_argument("--trainers", default="native,hf")
    p.add_argument("--eval_rows", type=int, default=None, help="validation rows scored (default: all 2,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--malloc_mmap_threshold", type=int, default=None, metavar="BYTES",
                   help="MALLOC_MMAP_THRESHOLD_ for the trainers (e.g. 131072): peak memory that follows the live "
                        "tensors instead of the heap's high-water mark; slower")
    args = p.parse_args()
    env = None
    if args.malloc_mmap_threshold:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(args.malloc_mmap_threshold))
    result_name = "lora_live_memory" if args.malloc_mmap_threshold else "lora"
    require_shared()
    work = Path(tempfile.mkdtemp(prefix="bench_lora_"))
    train_fn = write_tsv(work / "train.tsv", emotion("train", args.rows, args.seed))
    test_fn = write_tsv(work / "valid.tsv", emotion("val", args.eval_rows, args.seed))
    systems = [("full", [])] + [(f"LoRA r {r}", ["--lora_r", r]) for r in args.ranks.split(",") if r]
    # rows of an earlier run at the same scale are kept (a trainer at a time fits a short CPU slot)
    scale = {key: getattr(args, key) for key in ("rows", "n_epochs", "eval_rows", "seed")}
    earlier = json.loads(RESULTS.read_text()).get(result_name, {}) if RESULTS.exists() else {}
    kept = [row for row in earlier.get("rows", []) if earlier.get("scale") == scale
            and row["trainer"] not in args.trainers.split(",")]
    rows = []
    for trainer in args.trainers.split(","):
        for name, flags in systems:
            model_fn = work / f"{trainer}-{name.replace(' ', '')}"
            command = [sys.executable, str(ROOT / SCRIPTS[trainer]), "--model_fn", str(model_fn), "--train_fn",
                       str(train_fn), "--test_fn", str(test_fn), "--n_epochs", str(args.n_epochs),
                       "--few_shot", "off", "--seed", str(args.seed), *map(str, flags)]
            seconds, peak = run_peak_rss(command, env)
            record = json.loads((model_fn / "training_args.json").read_text())
            metrics = json.loads((model_fn / "metrics.json").read_text())
            history = json.loads((model_fn / "history.json").read_text())
            train_seconds = sum(row["epoch_time_s"] for row in history)
            adapter = model_fn / "adapter" / "adapter_model.safetensors"
            rows.append({"trainer": trainer, "system": name, "accuracy": round(metrics["test"]["accuracy"], 4),
                         "samples_per_s": round(record["n_train"] * args.n_epochs / train_seconds, 1),
                         "peak_rss_mb": round(peak), "trained_share": record["trained_parameters"] / record["all_parameters"],
                         "adapter_mb": round(adapter.stat().st_size / 2**20, 2) if adapter.exists() else None,
                         "lr": record["lr"], "wall_s": round(seconds)})
            print(json.dumps(rows[-1]), flush=True)
    rows = [{key: value for key, value in row.items() if not key.endswith("_vs_full") and key != "trained"}
            for row in kept] + rows
    for row in rows:
        full = next(r for r in rows if r["trainer"] == row["trainer"] and r["system"] == "full")
        row["accuracy_vs_full"] = f"{(row['accuracy'] - full['accuracy']) * 100:+.1f} pt"
        row["speed_vs_full"] = f"{row['samples_per_s'] / full['samples_per_s']:.2f}x"
        row["memory_vs_full"] = f"{row['peak_rss_mb'] / full['peak_rss_mb']:.2f}x"
        row["trained"] = f"{row['trained_share']:.2%}"
    print(f"\n{machine()}; commit {git_commit()}; emotion, {args.rows} training rows (10% of them for the best "
          f"epoch), {args.n_epochs} epochs, scored on {args.eval_rows or 'all 2,000'} validation rows"
          + (f"; MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold}" if env else "") + "\n")
    print(table(rows, ["trainer", "system", "accuracy", "accuracy_vs_full", "samples_per_s", "speed_vs_full",
                       "peak_rss_mb", "memory_vs_full", "trained", "adapter_mb", "lr"]))
    save_result(result_name, {"machine": machine(), "commit": git_commit(), "scale": scale, "rows": rows})


if __name__ == "__main__":
    main()
