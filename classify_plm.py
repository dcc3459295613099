"""Classify sentences with a fine-tuned model.

Reads UTF-8 lines from stdin and prints one `label<TAB>sentence` line per non-blank input line, in
input order. For a model trained on sentence pairs, each input line is `sentence<TAB>sentence_pair`.
Input is read in chunks, each chunk sorted by length and batched (little padding), so memory stays
flat on any number of lines."""
import argparse
import sys
import time
from itertools import islice

import torch

from data_load import Example, TextClassificationCollator, TextClassificationDataset
from utils.checkpoint import load_checkpoint
from utils.errors import UserError, exit_on_user_error
from utils.runtime import autocast_context, choose_device, choose_precision, pad_to_multiple_of


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_fn", required=True, help="model directory written by finetune_plm_hf.py/_native.py")
    p.add_argument("--top_k", type=int, default=1, help="print the K most probable labels, separated by spaces")
    p.add_argument("--with_prob", action="store_true",
                   help="add a column with the probability of each printed label: `labels<TAB>probs<TAB>sentence`")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--chunk_size", type=int, default=8192, help="lines read, sorted and classified at a time")
    p.add_argument("--max_length", type=int, default=None, help="truncate at this many tokens (default: as trained)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                   help="auto: bf16/fp16 on CUDA, fp32 on CPU")
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8: dynamic int8 quantization of the Linear layers (CPU only; faster, tiny accuracy cost)")
    return p.parse_args()


def main():
    args = parse_args()
    if args.top_k < 1:
        raise UserError("--top_k must be at least 1")
    device = choose_device(args.device)
    precision = choose_precision(args.precision, device)
    tokenizer, model, training_args = load_checkpoint(args.model_fn, device)
    if args.quantize == "int8":
        if device.type != "cpu":
            raise UserError("--quantize int8 runs on the CPU; use --precision fp16/bf16 on CUDA instead")
        model = quantize_int8(model)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    top_k = min(args.top_k, len(labels))
    max_length = args.max_length or training_args.get("max_length", 128)
    pairs = training_args.get("has_pairs", False)
    collate = TextClassificationCollator(tokenizer, pad_to_multiple_of=pad_to_multiple_of(precision))
    autocast = autocast_context(device, precision)

    started, n_sentences = time.time(), 0
    lines = read_lines(sys.stdin.buffer)
    out = sys.stdout
    while chunk := list(islice(lines, args.chunk_size)):
        examples = [as_example(line, pairs) for line in chunk]
        probabilities = classify(model, tokenizer, collate, examples, max_length, args.batch_size, device, autocast)
        scores, best = probabilities.topk(top_k, dim=-1)
        for line, row, ids in zip(chunk, scores.tolist(), best.tolist()):
            predicted = " ".join(labels[i] for i in ids)
            if args.with_prob:
                predicted += "\t" + " ".join(f"{score:.4f}" for score in row)
            out.write(f"{predicted}\t{line}\n")
        out.flush()
        n_sentences += len(chunk)
    elapsed = time.time() - started
    print(f"classified {n_sentences} sentences in {elapsed:.2f} s "
          f"({n_sentences / elapsed if elapsed else 0:.1f} sentences/s)", file=sys.stderr)


def read_lines(stream):
    """Non-blank lines without their line ending; undecodable bytes become U+FFFD instead of stopping."""
    for raw in stream:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n").replace("\x00", "\ufffd")
        if line.startswith("\ufeff"):
            line = line[1:]
        if line.strip():
            yield line


def as_example(line, pairs):
    if pairs and "\t" in line:
        text, pair = line.split("\t", 1)
        return Example(text=text, text_pair=pair)
    return Example(text=line, text_pair="" if pairs else None)


@torch.inference_mode()
def classify(model, tokenizer, collate, examples, max_length, batch_size, device, autocast):
    """Class probabilities in input order; batches are formed from length-sorted examples."""
    dataset = TextClassificationDataset(examples, tokenizer, max_length)
    order = sorted(range(len(dataset)), key=lambda i: dataset.lengths[i])
    probabilities = torch.empty(len(dataset), model.config.num_labels)
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([dataset[i] for i in indices]).items()}
        with autocast:
            logits = model(**batch).logits
        probabilities[indices] = logits.float().softmax(dim=-1).cpu()
    return probabilities


def quantize_int8(model):
    """Dynamic int8 quantization of every Linear layer: int8 weights with one scale per output channel
    (a single scale per tensor cost 0.9 points of accuracy on emotion; per channel 0.05), activations
    quantized per batch."""
    import warnings
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, but in torch 2.13 it is still the
        # fastest int8 path on x86 CPUs (see docs/benchmarks.md); its notices are not the user's to act on.
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig})


if __name__ == "__main__":
    try:
        exit_on_user_error(main)
    except BrokenPipeError:  # `classify_plm.py ... | head` is not an error
        sys.stderr.close()
