"""Classifying a corpus: the stdin filter against file mode (local engine) and file mode on Ray.

    python bench/classify_scale.py                          # 200k lines, then memory at 100k and 1M lines
    python bench/classify_scale.py --n_lines 20000 --memory_lines 0

The corpus is NSMC and emotion sentences, interleaved and repeated to --n_lines, one a line. Every
system classifies it with MiniLM-L6 (the offline default model, a seeded 2-class head: speed does not
depend on what the head learnt), exported to ONNX int8, on the same cores:
  stdin               classify_plm.py < corpus.txt > /dev/null, the shipped filter
  file 1x2            --input_fn/--output_fn, one process with 2 onnxruntime threads
  file 2x1            --num_workers 2: two processes of one thread each
  ray 2x1             --engine ray --num_workers 2: a local Ray cluster, two actors of one thread
Systems take turns for --repeats rounds (median shown, every round listed), so load from other jobs
on a shared machine hits them alike. Lines/s are of the whole command (start-up included). For file mode,
start-up (launch to the first shard started) and the rate once running (lines over first shard started to
last shard done) are apart, read from the part files as they appear (--shard_size 1000: 20 shards of
20,000 lines); "1-line run s" is the whole command on a 1-line input. --baseline_root runs each Ray
system of another checkout too ("ray 2x1 before"), in the same rounds. Peak RSS is of the whole
process tree (Ray's raylet, GCS and workers included), sampled every 50 ms. Memory flatness: file mode on --memory_lines against a tenth of
them, with a tiny 2-layer model (MiniLM would need ~30 min per million lines on 2 cores; what grows
with the input is the reading and writing, not the model)."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from common import ROOT, emotion, median, nsmc, require_shared, table


def corpus(path, n_lines):
    texts = [text for _, text in nsmc("test")]
    other = [text for _, text in emotion("train")]
    mixed = [t for pair in zip(texts, other) for t in pair]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_lines):
            f.write(mixed[i % len(mixed)].replace("\t", " ") + "\n")
    return path


def minilm(directory):
    """The offline default model with a seeded 2-class head, exported (model.int8.onnx)."""
    if (directory / "model.int8.onnx").exists():
        return directory
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from checkpoint.saved_model import save_model
    from utils.hub import default_model_path
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=2)
    save_checkpoint(directory, model, AutoTokenizer.from_pretrained(default_model_path()), save_model)
    return directory


def tiny(directory):
    """A 2-layer BERT (hidden 64) with the default tokenizer, exported."""
    if (directory / "model.int8.onnx").exists():
        return directory
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig
    from checkpoint.saved_model import save_model
    from utils.hub import default_model_path
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=128, num_labels=2))
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 2][-1]
    torch.nn.init.normal_(head.weight, std=0.5)  # a fine-tuned head's scale, so the export's int8 check passes
    save_checkpoint(directory, model, tokenizer, save_model)
    return directory


def save_checkpoint(directory, model, tokenizer, save_model):
    labels = ["negative", "positive"]
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    save_model(directory, model, tokenizer, {"max_length": 128, "has_pairs": False, "labels": labels})
    subprocess.run([sys.executable, str(ROOT / "export_plm.py"), "--model_fn", str(directory)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)


def measure(command, stdin_path=None, env=None, watch=None, cwd=ROOT):
    """(seconds, peak RSS of the process tree in MiB, stderr's last line, shard times). With `watch` (file
    mode's --output_fn), shard times are (seconds from the command's start to the first shard started,
    seconds to the last shard finished), seen from the part files: a shard's temporary part file appears as
    it starts (batch/shard_work.py creates it then; before 2026-12-07 a Parquet part appeared with its first chunk,
    often the whole shard, so start-up included a shard's work) and its part-NNNNN file when it is done."""
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    started = time.time()
    process = subprocess.Popen(command, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd,
                               env=env, start_new_session=True)
    import threading
    stderr = []
    reader = threading.Thread(target=lambda: stderr.append(process.stderr.read()), daemon=True)
    reader.start()
    handle, peak = psutil.Process(process.pid), 0
    first_started = last_done = None
    done = 0
    while process.poll() is None:
        if watch is not None:
            try:
                names = os.listdir(watch)
            except FileNotFoundError:
                names = []
            now = time.time() - started
            if first_started is None and any(name.startswith((".part-", "part-")) for name in names):
                first_started = now
            finished = sum(name.startswith("part-") for name in names)
            if finished > done:
                done, last_done = finished, now
        try:
            tree = [handle, *handle.children(recursive=True)]
            rss = 0
            for p in tree:
                try:
                    rss += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            peak = max(peak, rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    elapsed = time.time() - started
    reader.join()
    if stdin_path:
        stdin.close()
    text = stderr[0].decode(errors="replace") if stderr else ""
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("classify:")]
    if process.returncode:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{text[-3000:]}")
    return elapsed, peak / 2**20, lines[-1] if lines else "", (first_started, last_done)


SYSTEMS = {
    "stdin": [],
    "file 1x2": ["--num_workers", "1"],
    "file 2x1": ["--num_workers", "2"],
    "ray 2x1": ["--engine", "ray", "--num_workers", "2"],
}


def run_system(name, model_fn, corpus_path, out_dir, env, baseline_root=None, shard_size=1000):
    """One system's run; a name ending in " before" runs classify_plm.py of --baseline_root (another checkout)."""
    root = Path(baseline_root) if name.endswith(" before") else ROOT
    base = [sys.executable, str(root / "classify_plm.py"), "--model_fn", str(model_fn), "--backend", "onnx",
            "--quantize", "int8"]
    if name == "stdin":
        return measure(base, corpus_path, env)
    import shutil
    shutil.rmtree(out_dir, ignore_errors=True)
    flags = SYSTEMS[name.removesuffix(" before")]
    return measure([*base, "--input_fn", str(corpus_path), "--output_fn", str(out_dir), "--shard_size",
                    str(shard_size), *flags], env=env, watch=out_dir,
                   cwd=root)  # Ray's workers put the driver's directory first on sys.path: the checkout's own code


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_lines", type=int, default=200_000)
    p.add_argument("--memory_lines", type=int, default=1_000_000, help="0: no memory run")
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    p.add_argument("--baseline_root", help="another checkout (the code before a change): each Ray system "
                   "also runs as '<system> before' with its classify_plm.py, in the same rounds")
    p.add_argument("--shard_size", type=int, default=1000,
                   help="file mode's --shard_size: 20 shards of 20,000 lines, so the rate once running is "
                        "measured over many shards, not one a worker")
    p.add_argument("--repeats", type=int, default=3, help="rounds; the table shows each system's median")
    p.add_argument("--work_dir", help="keep the models and corpora here between runs (default: a temporary directory)")
    args = p.parse_args()
    require_shared()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("OMP_NUM_THREADS", None)  # each system shares the cores out its own way
    from common import machine
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    print(f"machine: {machine()}; commit {commit}\n")
    systems = list(args.systems)
    if args.baseline_root:
        systems += [f"{name} before" for name in args.systems if name.startswith("ray")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model_fn = minilm(work / "minilm")
        one_line = corpus(work / "one.txt", 1)
        path = work / f"corpus{args.n_lines}.txt"
        if not path.exists():
            corpus(path, args.n_lines)
        runs = {name: [] for name in systems}

        def run(name, corpus_path):
            return run_system(name, model_fn, corpus_path, work / "out", env, args.baseline_root, args.shard_size)
        start_ups = {name: run(name, one_line)[0] for name in systems}
        for round_ in range(args.repeats):  # systems take turns, so a burst of load elsewhere hits them all alike
            for name in systems:
                runs[name].append(run(name, path))
                print(f"round {round_ + 1}, {name}: {runs[name][-1][2]} {runs[name][-1][3]}", file=sys.stderr,
                      flush=True)
        rows = []
        for name in systems:
            seconds = median([run[0] for run in runs[name]])
            peak = max(run[1] for run in runs[name])
            row = {"system": name, "lines": f"{args.n_lines:,}", "seconds": f"{seconds:.1f}",
                   "lines/s": f"{args.n_lines / seconds:.0f}",
                   "runs lines/s": " ".join(f"{args.n_lines / run[0]:.0f}" for run in runs[name]),
                   "1-line run s": f"{start_ups[name]:.1f}", "peak RSS MiB": f"{peak:.0f}",
                   "_rate": args.n_lines / seconds}
            shard_times = [run[3] for run in runs[name] if run[3][0] is not None and run[3][1] is not None]
            if shard_times:  # file mode: start-up and the rate once the shards run, apart
                row["start-up s"] = f"{median([first for first, _ in shard_times]):.1f}"
                row["_marginal"] = median([args.n_lines / (last - first) for first, last in shard_times])
                row["running lines/s"] = f"{row['_marginal']:.0f}"
            rows.append(row)
        rates = {row["system"]: row["_rate"] for row in rows}
        best_local = max((rates[s] for s in ("file 1x2", "file 2x1") if s in rates), default=None)
        marginal = {row["system"]: row["_marginal"] for row in rows if "_marginal" in row}
        best_running = max((marginal[s] for s in ("file 1x2", "file 2x1") if s in marginal), default=None)
        for row in rows:
            if "stdin" in rates:
                row["vs stdin"] = f"{row['_rate'] / rates['stdin']:.2f}x"
            if best_local:
                row["vs best local"] = f"{row['_rate'] / best_local:.2f}x"
            if best_running and "_marginal" in row:
                row["running vs best local"] = f"{row['_marginal'] / best_running:.2f}x"
        print(table(rows, ["system", "lines", "seconds", "lines/s", "vs best local", "start-up s", "running lines/s",
                           "running vs best local", "runs lines/s", "1-line run s", "peak RSS MiB"]))
        print(f"load average after: {os.getloadavg()[0]:.1f} (above 2.0: other jobs shared the cores)")

        if args.memory_lines:
            tiny_fn = tiny(work / "tiny")
            memory = []
            for n in (args.memory_lines // 10, args.memory_lines):
                path = work / f"corpus{n}.txt"
                if not path.exists():
                    corpus(path, n)
                for name in ("file 2x1",):
                    seconds, peak, _, _ = run_system(name, tiny_fn, path, work / "out", env, shard_size=10_000)
                    memory.append({"system": f"{name}, tiny model", "lines": f"{n:,}", "seconds": f"{seconds:.0f}",
                                   "lines/s": f"{n / seconds:.0f}", "peak RSS MiB": f"{peak:.0f}"})
            print()
            print(table(memory, ["system", "lines", "seconds", "lines/s", "peak RSS MiB"]))
            growth = float(memory[-1]["peak RSS MiB"]) - float(memory[0]["peak RSS MiB"])
            print(f"\npeak RSS at {args.memory_lines:,} lines - at {args.memory_lines // 10:,}: {growth:+.0f} MiB")
        print(json.dumps({"n_lines": args.n_lines, "rates": rates}))


if __name__ == "__main__":
    main()
