"""Classify sentences with a fine-tuned model.

Reads UTF-8 lines from stdin and prints one `label<TAB>sentence` line per non-blank input line, in
input order. For a model trained on sentence pairs, each input line is `sentence<TAB>sentence_pair`.
For a multi-label model the first column holds every label whose probability reaches the decision
threshold, the most probable first, joined by the model's --label_separator (default `,`), or the
single most probable label when none does.
Input is read in chunks, each chunk sorted by length and batched (little padding), so memory stays
flat on any number of lines. Two backends give the same output: PyTorch (the default) and, after
`export_plm.py`, onnxruntime (`--backend onnx`), which starts in a fraction of the time."""
import argparse
import sys
import time
from itertools import islice

from inference.decision import choose_labels
from utils.cli import ArgumentParser, float_range, int_at_least
from utils.errors import UserError, exit_on_user_error
from utils.tokens import MIN_LENGTH

BACKEND_HELP = ("torch (default): PyTorch and transformers, on the CPU or CUDA. onnx: the model written by "
                "`export_plm.py --model_fn M` (M/model.onnx, or M/model.int8.onnx with --quantize int8), run by "
                "onnxruntime on the CPU without importing torch or transformers: a 1-line input takes 0.3-0.5 s "
                "instead of 5-6 s (docs/benchmarks.md)")


def parse_args():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_fn", required=True, help="model directory written by finetune_plm_hf.py/_native.py")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch", help=BACKEND_HELP)
    p.add_argument("--top_k", type=int_at_least(1), default=None,
                   help="print the K most probable labels, separated by spaces (default 1; for a multi-label model: "
                        "at most K of the labels that pass the threshold)")
    p.add_argument("--threshold", type=float_range(0, 1), default=None,
                   help="multi-label models: print every label whose probability is at least this, for every label "
                        "(default: the threshold tuned on validation when the model was trained, or one per label "
                        "after --threshold_per_label, in training_args.json); when no "
                        "label reaches it, the most probable one is printed")
    p.add_argument("--with_prob", action="store_true",
                   help="add a column with the probability of each printed label: `labels<TAB>probs<TAB>sentence`")
    p.add_argument("--batch_size", type=int_at_least(1), default=128)
    p.add_argument("--chunk_size", type=int_at_least(1), default=8192, help="lines read, sorted and classified at a time")
    p.add_argument("--max_length", type=int_at_least(MIN_LENGTH), default=None,
                   help="truncate at this many tokens (default: as trained; at most what the model allows)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="torch backend only")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                   help="auto: bf16/fp16 on CUDA, fp32 on CPU (torch backend only)")
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8 (CPU only; faster, tiny accuracy cost): with --backend torch, dynamic int8 "
                        "quantization of the Linear layers; with --backend onnx, the int8 model export_plm.py wrote")
    return p.parse_args()


def main():
    args = parse_args()
    classifier = load_classifier(args)
    labels = classifier.labels
    if args.threshold is not None and not classifier.multi_label:
        raise UserError(f"--threshold: {args.model_fn} is a single-label model (one label per sentence); "
                        "--threshold applies to multi-label models")
    threshold = classifier.threshold if args.threshold is None else args.threshold
    # a multi-label prediction's labels are joined as in the training data (names may hold spaces)
    joiner = classifier.label_separator if classifier.multi_label else " "

    started, n_sentences = time.time(), 0
    lines = read_lines(sys.stdin.buffer)
    out = sys.stdout
    while chunk := list(islice(lines, args.chunk_size)):
        probabilities = classifier.probabilities([split_pair(line, classifier.pairs) for line in chunk])
        scores, best = choose_labels(probabilities, classifier.multi_label, args.top_k, threshold)
        for line, row, ids in zip(chunk, scores, best):
            predicted = joiner.join(labels[i] for i in ids)
            if args.with_prob:
                predicted += "\t" + joiner.join(f"{score:.4f}" for score in row)
            out.write(f"{predicted}\t{line}\n")
        out.flush()
        n_sentences += len(chunk)
    elapsed = time.time() - started
    print(f"classified {n_sentences} sentences in {elapsed:.2f} s "
          f"({n_sentences / elapsed if elapsed else 0:.1f} sentences/s)", file=sys.stderr)


def load_classifier(args):
    """The chosen backend; torch and transformers are imported only when it is the torch one."""
    if args.backend == "onnx":
        if args.device == "cuda" or args.precision in ("fp16", "bf16"):
            flag = "--device cuda" if args.device == "cuda" else f"--precision {args.precision}"
            raise UserError(f"{flag}: --backend onnx runs on the CPU in fp32 (or --quantize int8); "
                            "use --backend torch for CUDA and half precision")
        from inference.onnx_classifier import OnnxClassifier
        return OnnxClassifier(args.model_fn, args.quantize, args.max_length, args.batch_size)
    from inference.torch_classifier import TorchClassifier
    return TorchClassifier(args)


def read_lines(stream):
    """Non-blank lines without their line ending; undecodable bytes become U+FFFD instead of stopping."""
    for raw in stream:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n").replace("\x00", "\ufffd")
        if line.startswith("\ufeff"):
            line = line[1:]
        if line.strip():
            yield line


def split_pair(line, pairs):
    """(text, pair): a pair model reads `sentence<TAB>sentence_pair` (an empty pair when there is no tab)."""
    if pairs and "\t" in line:
        text, pair = line.split("\t", 1)
        return text, pair
    return line, "" if pairs else None


if __name__ == "__main__":
    try:
        exit_on_user_error(main)
    except BrokenPipeError:  # `classify_plm.py ... | head` is not an error
        sys.stderr.close()
