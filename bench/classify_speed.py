"""Classification speed: transformers.pipeline against classify_plm.py (torch and onnx, fp32 and int8).

    python bench/classify_speed.py                   # emotion and NSMC, median of 3
    python bench/classify_speed.py --datasets emotion --n_sentences 500 --repeats 1

For each dataset a model is fine-tuned first with finetune_plm_native.py (or reused with
--model_dir) and exported with export_plm.py, then the same labelled sentences are classified by
  pipeline        transformers.pipeline("text-classification") as the tutorials call it (batch 1)
  pipeline b128   the same with batch_size=128 (input order, padded to each batch's longest)
  torch fp32      classify_plm.py as shipped (length-sorted batches of 128)
  torch int8      classify_plm.py --quantize int8
  onnx fp32       classify_plm.py --backend onnx (onnxruntime, no torch imported)
  onnx int8       classify_plm.py --backend onnx --quantize int8
all on the same thread count. Seconds exclude loading the model (marginal speed). The table gives
sentences/s, the ratios to the tutorial pipeline and to torch fp32, the start-up: seconds for a whole
process on a 1-line input, accuracy on the gold labels and agreement with torch fp32."""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DATASETS, ROOT, machine, median, require_shared, table, write_tsv

SPLITS = {"emotion": ("train", "val"), "nsmc": ("train", "test")}
SYSTEMS = ["pipeline", "pipeline b128", "torch fp32", "torch int8", "onnx fp32", "onnx int8"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["emotion", "nsmc"], choices=list(DATASETS))
    p.add_argument("--n_train", type=int, default=4000, help="lines to fine-tune the benchmark model on")
    p.add_argument("--n_epochs", type=int, default=2)
    p.add_argument("--n_sentences", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model_dir", help="reuse models here (<model_dir>/<dataset>) instead of fine-tuning anew")
    args = p.parse_args()
    require_shared()
    import torch
    torch.set_num_threads(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    print(f"machine: {machine()}\n")
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            train_split, test_split = SPLITS[dataset]
            model_fn = Path(args.model_dir or tmp) / dataset
            if not model_fn.exists():
                train_fn = write_tsv(Path(tmp) / f"{dataset}.train.tsv", DATASETS[dataset](train_split, args.n_train, seed=2))
                print(f"fine-tuning {model_fn} on {args.n_train} {dataset} lines ...", file=sys.stderr)
                subprocess.run([sys.executable, str(ROOT / "finetune_plm_native.py"), "--model_fn", str(model_fn),
                                "--train_fn", str(train_fn), "--n_epochs", str(args.n_epochs)],
                               check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
            if not (model_fn / "model.int8.onnx").exists():
                subprocess.run([sys.executable, str(ROOT / "export_plm.py"), "--model_fn", str(model_fn)],
                               check=True, env=env, cwd=ROOT, stdout=sys.stderr)
            rows = DATASETS[dataset](test_split, args.n_sentences, seed=3)
            gold = [label for label, _ in rows]
            texts = [text.replace("\t", " ") for _, text in rows]
            results = {name: [] for name in SYSTEMS}
            startup = {name: [] for name in SYSTEMS if name != "pipeline b128"}
            predictions = {}
            for repeat in range(args.repeats):
                for name in results:
                    seconds, predicted = run(name, model_fn, texts, env)
                    results[name].append(seconds)
                    predictions[name] = predicted
                    if name in startup:
                        startup[name].append(start_up(name, model_fn, texts[0], env))
                    note = f", 1-line start-up {startup[name][-1]:.2f} s" if name in startup else ""
                    print(f"  {dataset} run {repeat + 1}/{args.repeats} {name}: {len(texts) / seconds:.1f} "
                          f"sentences/s{note}", file=sys.stderr)
            base = len(texts) / median(results["pipeline"])
            torch_fp32 = len(texts) / median(results["torch fp32"])
            out = []
            for name, times in results.items():
                rate = len(texts) / median(times)
                out.append({"system": name, "sentences/s": f"{rate:.1f}", "vs pipeline": f"{rate / base:.2f}x",
                            "vs torch fp32": f"{rate / torch_fp32:.2f}x",
                            "1-line start-up s": f"{median(startup[name]):.2f}" if name in startup else "",
                            "accuracy": f"{accuracy(predictions[name], gold):.2%}",
                            "agreement with torch fp32":
                                f"{accuracy(predictions[name], predictions['torch fp32']):.2%}"})
            print(f"\n{dataset}: {len(texts)} sentences from {test_split}, model fine-tuned on {args.n_train} "
                  f"{train_split} lines, {args.threads} threads, median of {args.repeats}")
            print(table(out, list(out[0])))
            print()


def run(name, model_fn, texts, env):
    """(seconds excluding model load, predicted labels)."""
    if name.startswith("pipeline"):
        from transformers import pipeline
        classifier = pipeline("text-classification", model=str(model_fn), device="cpu")
        kwargs = {"batch_size": 128} if name.endswith("b128") else {}
        started = time.perf_counter()
        output = classifier(texts, truncation=True, max_length=128, **kwargs)
        return time.perf_counter() - started, [o["label"] for o in output]
    result = subprocess.run(command(name, model_fn), input="\n".join(texts) + "\n", capture_output=True, text=True,
                            env=env, cwd=ROOT, check=True)
    summary = [line for line in result.stderr.splitlines() if line.startswith("classified")][-1]
    seconds = float(summary.split(" in ")[1].split(" s")[0])
    return seconds, [line.split("\t")[0] for line in result.stdout.splitlines()]


def command(name, model_fn):
    """The whole process that `name` is: classify_plm.py with its flags, or a script around the pipeline."""
    if name == "pipeline":
        script = ("import sys; from transformers import pipeline; "
                  f"c = pipeline('text-classification', model={str(model_fn)!r}, device='cpu'); "
                  "[print(o['label'], line, sep='\\t') for line in sys.stdin.read().splitlines() for o in c(line)]")
        return [sys.executable, "-c", script]
    backend, precision = name.split()
    flags = ["--backend", backend] + (["--quantize", "int8"] if precision == "int8" else [])
    return [sys.executable, str(ROOT / "classify_plm.py"), "--model_fn", str(model_fn), *flags]


def start_up(name, model_fn, line, env):
    """Wall-clock seconds of the whole process on a 1-line input: imports, model load, one sentence."""
    started = time.perf_counter()
    subprocess.run(command(name, model_fn), input=line + "\n", capture_output=True, text=True, env=env, cwd=ROOT,
                   check=True)
    return time.perf_counter() - started


def accuracy(predicted, gold):
    return sum(p == g for p, g in zip(predicted, gold)) / len(gold)


if __name__ == "__main__":
    main()
