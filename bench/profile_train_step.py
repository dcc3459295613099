"""Where a training step's time goes: forward, backward, clipping and AdamW, on real batches.

    python bench/profile_train_step.py                 # emotion, batch 32, 20 steps
    python bench/profile_train_step.py --dataset nsmc

Batches are built exactly as finetune_plm_native.py builds them (length-grouped sampler,
dynamic padding); the step is the native loop's step. Prints milliseconds per phase and the
top operators from torch.profiler."""
import argparse
import time

import torch
from common import DATASETS, require_shared


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="emotion", choices=list(DATASETS))
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--fused", action="store_true", help="fused AdamW kernel (what both trainers use)")
    args = p.parse_args()
    require_shared()
    from checkpoint.pretrained import load_pretrained_model, load_tokenizer
    from data_load import Example, LengthGroupedBatchSampler, TextClassificationCollator, TextClassificationDataset
    from utils.hub import default_model_path
    rows = DATASETS[args.dataset]("train", args.batch_size * (args.steps + 2), seed=5)
    labels = sorted({label for label, _ in rows})
    tokenizer = load_tokenizer(default_model_path())
    model = load_pretrained_model(default_model_path(), labels).train()
    dataset = TextClassificationDataset([Example(text, label) for label, text in rows], tokenizer, 128,
                                        {label: i for i, label in enumerate(labels)})
    collate = TextClassificationCollator(tokenizer)
    batches = [collate([dataset[i] for i in b]) for b in LengthGroupedBatchSampler(dataset.lengths, args.batch_size)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=args.fused)
    phases = {"forward": 0.0, "backward": 0.0, "clip": 0.0, "optimizer": 0.0}

    def step(batch, timed):
        t0 = time.perf_counter()
        loss = model(**batch).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if timed:
            for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                phases[name] += seconds

    for batch in batches[:2]:
        step(batch, timed=False)
    for batch in batches[2:]:
        step(batch, timed=True)
    n = len(batches) - 2
    total = sum(phases.values())
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[2:]) / n
    print(f"{args.dataset}, batch {args.batch_size}, {tokens:.0f} real tokens a batch, {torch.get_num_threads()} threads")
    for name, seconds in phases.items():
        print(f"  {name:9s} {seconds / n * 1000:7.1f} ms  {seconds / total:6.1%}")
    print(f"  {'step':9s} {total / n * 1000:7.1f} ms  ({args.batch_size * n / total:.1f} samples/s)")
    with torch.profiler.profile() as prof:
        for batch in batches[2:6]:
            step(batch, timed=False)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
