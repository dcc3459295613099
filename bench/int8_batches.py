"""int8 and batch composition: does a text get the same label whatever else is in its batch?

    python bench/int8_batches.py --model_dir models/bench      # reuse <model_dir>/emotion (bench/classify_speed.py's)
    python bench/int8_batches.py --n_train 800 --n_epochs 1    # the issue's model: 800 lines, one epoch

A model fine-tuned on emotion (or reused) is exported; each int8 system then classifies emotion's 2,000
validation lines three ways, through the classifier classify_plm.py and the server use:
  batched     the 2,000 lines at once (length-sorted batches of 128, as the stdin filter)
  alone       each line on its own
  shuffled    --copies copies of the 2,000 lines, shuffled, in chunks of 512 (as a stream of mixed input)
Systems, all in this process on the same threads, taking turns for the timings (--repeats, median):
  onnx fp32, torch fp32                 the references
  onnx int8 per batch, torch int8 per batch   dynamic quantization as shipped before: one activation scale per
                                        batch tensor (quantize_dynamic, both backends)
  onnx int8 as before                   the same per-batch graph run with all of onnxruntime's fusions, as sessions
                                        were before inference.onnx_classifier.SLOWER_FUSIONS (the graph is this
                                        export's: exports before commit 8c3023b also had transposes around attention)
  onnx int8, torch int8                 as shipped now: activations quantized per token
Columns: lines/s (batched, model loaded), texts labelled two ways over the shuffled copies, labels that
differ alone vs batched, the largest logit difference alone vs batched, agreement with the backend's fp32
and accuracy on the gold labels."""
import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, emotion, machine, median, require_shared, table, write_tsv


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", help="reuse <model_dir>/emotion (fine-tuned and exported) instead of training")
    p.add_argument("--n_train", type=int, default=4000)
    p.add_argument("--n_epochs", type=int, default=2)
    p.add_argument("--copies", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    require_shared()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    import torch
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}\n")
    with tempfile.TemporaryDirectory() as tmp:
        model_fn = Path(args.model_dir or tmp) / "emotion"
        if not model_fn.exists():
            train_fn = write_tsv(Path(tmp) / "train.tsv", emotion("train", args.n_train, seed=2))
            print(f"fine-tuning {model_fn} on {args.n_train} emotion lines ...", file=sys.stderr)
            subprocess.run([sys.executable, str(ROOT / "finetune_plm_native.py"), "--model_fn", str(model_fn),
                            "--train_fn", str(train_fn), "--n_epochs", str(args.n_epochs)], check=True, env=env,
                           cwd=ROOT, stdout=subprocess.DEVNULL)
        if not (model_fn / "model.int8.onnx").exists():
            subprocess.run([sys.executable, str(ROOT / "export_plm.py"), "--model_fn", str(model_fn)], check=True,
                           env=env, cwd=ROOT, stdout=sys.stderr)
        per_batch = Path(tmp) / "model.int8.per_batch.onnx"
        from inference.onnx_export import quantize_dynamic_only
        quantize_dynamic_only(model_fn / "model.onnx", per_batch)
        rows = emotion("val")
        gold, items = [label for label, _ in rows], [(text, None) for _, text in rows]
        systems = classifiers(model_fn, per_batch)
        times, logits = {name: [] for name in systems}, {}
        for _ in range(args.repeats):  # turns: load from other jobs hits every system alike
            for name, classifier in systems.items():
                classifier.logits(items[:64])
                started = time.perf_counter()
                logits[name] = classifier.logits(items)
                times[name].append(time.perf_counter() - started)
        out = []
        for name, classifier in systems.items():
            batched = logits[name]
            reference = logits[f"{classifier.backend} fp32"].argmax(1)
            row = {"system": name, "lines/s": f"{len(items) / median(times[name]):.1f}",
                   "agreement with fp32": f"{np.mean(batched.argmax(1) == reference):.2%}",
                   "accuracy": f"{np.mean([classifier.labels[i] == g for i, g in zip(batched.argmax(1), gold)]):.2%}"}
            if "int8" in name:
                alone = np.concatenate([classifier.logits([item]) for item in items])
                row.update({"two ways over copies": two_ways(classifier, items, args.copies),
                            "alone vs batched labels": int((alone.argmax(1) != batched.argmax(1)).sum()),
                            "alone vs batched max logit diff": f"{np.abs(alone - batched).max():.2g}"})
            out.append(row)
            print(f"  {name}: {row}", file=sys.stderr)
        print(f"emotion val: {len(items)} lines, model {model_fn.name} ({args.n_train} lines, {args.n_epochs} epochs "
              f"unless reused), {args.threads} threads, median of {args.repeats}; {args.copies} shuffled copies")
        print(table(out, ["system", "lines/s", "two ways over copies", "alone vs batched labels",
                          "alone vs batched max logit diff", "agreement with fp32", "accuracy"]))


def classifiers(model_fn, per_batch):
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from inference.classifier import ClassifierOptions
    from inference.onnx_classifier import OnnxClassifier, load_session
    from inference.torch_classifier import TorchClassifier

    def options(backend, quantize):
        return ClassifierOptions(model_fn=str(model_fn), backend=backend, quantize=quantize, batch_size=128,
                                 max_length=None, long_text=None, stride=None, window_pooling=None,
                                 max_batch_tokens=None, device="cpu", precision="fp32")
    systems = {"onnx fp32": OnnxClassifier(options("onnx", "none")),
               "onnx int8": OnnxClassifier(options("onnx", "int8")),
               "onnx int8 per batch": OnnxClassifier(options("onnx", "int8")),
               "onnx int8 as before": OnnxClassifier(options("onnx", "int8")),
               "torch fp32": TorchClassifier(options("torch", "none")),
               "torch int8": TorchClassifier(options("torch", "int8")),
               "torch int8 per batch": TorchClassifier(options("torch", "none"))}
    systems["onnx int8 per batch"].session = load_session(per_batch)
    systems["onnx int8 as before"].session = load_session(per_batch, disabled_fusions=())  # every onnxruntime fusion
    old = systems["torch int8 per batch"]
    old.model = quantize_dynamic(old.model, {__import__("torch").nn.Linear: per_channel_dynamic_qconfig})
    return systems


def two_ways(classifier, items, copies):
    """Texts given two labels over `copies` shuffled copies of the items, classified in chunks of 512."""
    order = list(range(len(items))) * copies
    random.Random(0).shuffle(order)
    seen = {}
    for start in range(0, len(order), 512):
        chunk = order[start:start + 512]
        for i, label in zip(chunk, classifier.logits([items[i] for i in chunk]).argmax(1)):
            seen.setdefault(i, set()).add(int(label))
    return sum(len(labels) > 1 for labels in seen.values())


if __name__ == "__main__":
    main()
