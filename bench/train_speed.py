"""Training speed: the tutorial way against finetune_plm_hf.py and finetune_plm_native.py.

    python bench/train_speed.py                      # emotion and NSMC, 512 samples, median of 3
    python bench/train_speed.py --datasets emotion --n_samples 256 --repeats 1

Each setup trains one epoch on the same samples with the same model and thread count, in its own
process (so peak memory is its own), three times; the table gives medians:
  tutorial  transformers.Trainer, every sentence padded to 128 tokens, random order
  hf        finetune_plm_hf.py as shipped (dynamic padding, length-grouped batches)
  native    finetune_plm_native.py as shipped (dynamic padding, its length-grouped sampler)
Epoch time for hf/native is what their history.json records (it includes evaluating 32 lines).
Achieved FLOP/s counts only real (non-pad) tokens, against a plain matmul of a layer's shapes
timed in this run: the share says how much of the machine's arithmetic the training uses."""
import argparse
import json
import os
import resource
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DATASETS, ROOT, machine, median, require_shared, table, write_tsv

SETUPS = ("tutorial", "hf", "native")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["emotion", "nsmc"], choices=list(DATASETS))
    p.add_argument("--n_samples", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--pretrained_model_name", default=None)
    p.add_argument("--worker", choices=SETUPS, help=argparse.SUPPRESS)
    p.add_argument("--train_fn", help=argparse.SUPPRESS)
    p.add_argument("--valid_fn", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    require_shared()
    import torch
    torch.set_num_threads(args.threads)
    from utils.hub import default_model_path
    model_name = args.pretrained_model_name or default_model_path()
    print(f"machine: {machine()}\nmodel: {model_name}\n")
    for dataset in args.datasets:
        with tempfile.TemporaryDirectory() as tmp:
            rows = DATASETS[dataset]("train", args.n_samples + 32, seed=1)
            train_fn = write_tsv(Path(tmp) / "train.tsv", rows[:args.n_samples])
            valid_fn = write_tsv(Path(tmp) / "valid.tsv", rows[args.n_samples:])
            stats = token_stats(model_name, [text for _, text in rows[:args.n_samples]], args.batch_size)
            matmul = matmul_flops(stats["tokens_per_batch"], stats["hidden"], stats["intermediate"])
            results = {setup: [] for setup in SETUPS}
            for repeat in range(args.repeats):
                for setup in SETUPS:  # interleaved, so drifting machine load hits every setup alike
                    results[setup].append(run_worker(setup, args, train_fn, valid_fn, model_name))
                    print(f"  {dataset} run {repeat + 1}/{args.repeats} {setup}: "
                          f"{args.n_samples / results[setup][-1]['seconds']:.1f} samples/s", file=sys.stderr)
            rows_out = []
            base = args.n_samples / median([r["seconds"] for r in results["tutorial"]])
            for setup in SETUPS:
                seconds = median([r["seconds"] for r in results[setup]])
                achieved = stats["train_flops"] / seconds
                rows_out.append({
                    "setup": setup,
                    "samples/s": f"{args.n_samples / seconds:.1f}",
                    "real tokens/s": f"{stats['real_tokens'] / seconds:.0f}",
                    "vs tutorial": f"{args.n_samples / seconds / base:.2f}x",
                    "peak RSS MB": f"{median([r['peak_rss_mb'] for r in results[setup]]):.0f}",
                    "GFLOP/s (real tokens)": f"{achieved / 1e9:.1f}",
                    "share of matmul": f"{achieved / matmul:.1%}",
                })
            print(f"\n{dataset}: {args.n_samples} samples, mean {stats['mean_tokens']:.1f} tokens "
                  f"(max_length 128), batch {args.batch_size}, {args.threads} threads, "
                  f"median of {args.repeats}; plain matmul {matmul / 1e9:.1f} GFLOP/s")
            print(table(rows_out, list(rows_out[0])))
            print()


def run_worker(setup, args, train_fn, valid_fn, model_name):
    command = [sys.executable, __file__, "--worker", setup, "--train_fn", str(train_fn), "--valid_fn", str(valid_fn),
               "--batch_size", str(args.batch_size), "--pretrained_model_name", model_name]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if run.returncode:
        sys.exit(f"{setup} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def worker(args):
    """One epoch of one setup; prints {"seconds", "peak_rss_mb"} as the last line."""
    with tempfile.TemporaryDirectory() as tmp:
        if args.worker == "tutorial":
            seconds = tutorial_epoch(args)
        else:
            script = {"hf": "finetune_plm_hf.py", "native": "finetune_plm_native.py"}[args.worker]
            model_fn = Path(tmp) / "model"
            sys.argv = [script, "--model_fn", str(model_fn), "--train_fn", args.train_fn, "--valid_fn", args.valid_fn,
                        "--n_epochs", "1", "--batch_size", str(args.batch_size), "--n_errors", "0",
                        "--pretrained_model_name", args.pretrained_model_name]
            sys.stdout = sys.stderr  # keep stdout for the result line
            runpy.run_path(str(ROOT / script), run_name="__main__")
            sys.stdout = sys.__stdout__
            seconds = json.loads((model_fn / "history.json").read_text())[0]["epoch_time_s"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak}))


def tutorial_epoch(args):
    """What the tutorials do: tokenize with padding="max_length", default collator, plain Trainer."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainerCallback,
                              TrainingArguments)
    from data_load import read_examples
    examples = read_examples(args.train_fn)
    labels = sorted({e.label for e in examples})
    tokenizer = AutoTokenizer.from_pretrained(args.pretrained_model_name)
    model = AutoModelForSequenceClassification.from_pretrained(args.pretrained_model_name, num_labels=len(labels))
    encoded = tokenizer([e.text for e in examples], padding="max_length", truncation=True, max_length=128)
    dataset = [{"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i],
                "token_type_ids": encoded["token_type_ids"][i], "labels": labels.index(e.label)}
               for i, e in enumerate(examples)]

    class EpochTimer(TrainerCallback):
        def on_epoch_begin(self, *a, **k):
            self.started = time.time()

        def on_epoch_end(self, *a, **k):
            self.seconds = time.time() - self.started

    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as tmp:
        training_args = TrainingArguments(output_dir=tmp, num_train_epochs=1, per_device_train_batch_size=args.batch_size,
                                          learning_rate=1e-4, save_strategy="no", report_to="none", use_cpu=True,
                                          dataloader_pin_memory=False, disable_tqdm=True)
        Trainer(model=model, args=training_args, train_dataset=dataset, callbacks=[timer]).train()
    del torch
    return timer.seconds


def token_stats(model_name, texts, batch_size):
    """Real token counts and the FLOPs one training pass over them costs (6 x params x tokens for
    the Linear layers, plus attention scores and mixing, 12 x L^2 x d per layer and sequence)."""
    from transformers import AutoConfig, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    config = AutoConfig.from_pretrained(model_name)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=128)["input_ids"]]
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    linear_params = layers * (4 * d * d + 2 * d * ff)
    flops = sum(6 * linear_params * n + layers * 12 * n * n * d for n in lengths)
    return {"real_tokens": sum(lengths), "mean_tokens": sum(lengths) / len(lengths), "train_flops": flops,
            "tokens_per_batch": int(batch_size * sum(lengths) / len(lengths)), "hidden": d, "intermediate": ff}


def matmul_flops(rows, hidden, intermediate, repeats=20):
    """FLOP/s of a plain fp32 matmul shaped like the feed-forward layer on one batch."""
    import torch
    a, b = torch.randn(rows, hidden), torch.randn(hidden, intermediate)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * rows * hidden * intermediate * repeats / (time.perf_counter() - started)


if __name__ == "__main__":
    main()
