"""Classify sentences with a fine-tuned model.

Reads UTF-8 lines from stdin and prints one `label<TAB>sentence` line per non-blank input line, in
input order. For a model trained on sentence pairs, each input line is `sentence<TAB>sentence_pair`.
For a multi-label model the first column holds every label whose probability reaches the decision
threshold, the most probable first, joined by the model's --label_separator (default `,`), or the
single most probable label when none does. A regression model (trained with --regression) prints its
predicted number instead of a label: `3.8125<TAB>sentence`.
Texts longer than the model's max length are handled as it was trained (--long_text: truncated, head
and tail, or sliding windows whose logits are pooled into one prediction per line).
Input is read in chunks, each chunk sorted by length and batched (little padding), so memory stays
flat on any number of lines. Two backends give the same output: PyTorch (the default) and, after
`export_plm.py`, onnxruntime (`--backend onnx`), which starts in a fraction of the time.

File mode, for a corpus of any size: `--input_fn corpus/ --output_fn predictions/` writes Parquet (or
JSONL) shards with each row's line, label and score; rerunning the same command after an interruption
classifies only the missing shards, and `--engine ray` spreads the shards over a Ray cluster
(batch/job.py, README "Classify a corpus").

--explain adds word attributions (inference/explain.py): stdin mode prints one JSON object a line,
{"label": ..., "score": ..., "text": ..., "words": [[word, attribution], ...]}, file mode a `words` column.


Which texts to label next: `--select N --input_fn unlabelled.txt --output_fn next.csv` writes the N texts the
model is least sure of (--strategy margin|entropy|random, --diversity), to be labelled and added to the
training data (inference/selection.py)."""
import argparse
import json
import sys
import time
from itertools import islice

from batch.job import add_file_flags, check_file_flags
from data_load.readers import LINE_PIECE, split_pair
from inference.classifier import ClassifierOptions, add_classifier_flags
from inference.explain import add_explain_flags, explain_options, explainer_of
from inference.load import load_classifier
from inference.selection import add_selection_flags, check_selection_flags, select_texts
from options.parser import ArgumentParser, float_range, int_at_least
from utils.errors import UserError, exit_on_user_error
from utils.log import log


def parse_args():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_classifier_flags(p)
    output = p.add_argument_group("output")
    output.add_argument("--top_k", type=int_at_least(1), default=None,
                        help="print the K most probable labels, separated by spaces (default 1; for a multi-label "
                             "model: at most K of the labels that pass the threshold)")
    output.add_argument("--threshold", type=float_range(0, 1), default=None,
                        help="multi-label models: print every label whose probability is at least this, for every "
                             "label (default: the threshold tuned on validation when the model was trained, or one "
                             "per label after --threshold_per_label, in training_args.json); when no "
                             "label reaches it, the most probable one is printed")
    output.add_argument("--with_prob", action="store_true",
                        help="add a column with the probability of each printed label: `labels<TAB>probs<TAB>sentence` "
                             "(file mode: a `probabilities` column with every label's)")
    output.add_argument("--chunk_size", type=int_at_least(1), default=8192,
                        help="lines read, sorted and classified at a time")
    add_explain_flags(p.add_argument_group("explain (README: Explain)"))
    add_file_flags(p)
    add_selection_flags(p)
    return p.parse_args()


def main():
    args = parse_args()
    if check_selection_flags(args):  # --select N: which texts of --input_fn to label next
        return select_texts(args, load_classifier(ClassifierOptions.from_flags(vars(args))))
    check_file_flags(args)
    explain = explain_options(vars(args), args.backend, args.quantize)  # None without --explain
    if args.input_fn:
        from batch import job as batch_job
        from checkpoint.saved_model import SavedModel
        saved = SavedModel.read(args.model_fn, ("config.json", "training_args.json"))
        check_threshold(args, saved.multi_label)
        batch_job.classify_files(args, saved, explain)  # the classifier is loaded where shards are classified
        return
    classifier = load_classifier(ClassifierOptions.from_flags(vars(args)))
    labels = classifier.labels
    check_threshold(args, classifier.multi_label)
    if classifier.regression and (args.top_k or args.with_prob):
        flag = "--top_k" if args.top_k else "--with_prob"
        raise UserError(f"{flag}: {args.model_fn} is a regression model, which prints one number per sentence; "
                        f"drop {flag}")
    # a multi-label prediction's labels are joined as in the training data (names may hold spaces)
    joiner = classifier.label_separator if classifier.multi_label else " "
    explainer = explainer_of(classifier, explain) if explain else None

    started, n_sentences = time.time(), 0
    lines = read_lines(sys.stdin.buffer)
    out = sys.stdout
    while chunk := list(islice(lines, args.chunk_size)):
        items = [split_pair(line, classifier.pairs) for line in chunk]
        prediction = classifier.predict(items, args.top_k, args.threshold)  # None: the model's own threshold
        if explainer:  # the same labels and scores, with the words behind them, as JSON
            words = explainer.explain_pairs(items, prediction.label_ids)
            for i, item in enumerate(items):
                out.write(json.dumps(explained(classifier, item, prediction.scores[i], prediction.label_ids[i],
                                               words[i], prediction.probabilities[i] if args.with_prob else None,
                                               single=not classifier.multi_label and (args.top_k or 1) == 1),
                                     ensure_ascii=False) + "\n")
            out.flush()
            n_sentences += len(chunk)
            continue
        for line, row, ids in zip(chunk, prediction.scores, prediction.label_ids):
            if classifier.regression:  # the predicted number (the score of the one output)
                out.write(f"{row[0]:.4f}\t{line}\n")
                continue
            predicted = joiner.join(labels[i] for i in ids)
            if args.with_prob:
                predicted += "\t" + joiner.join(f"{score:.4f}" for score in row)
            out.write(f"{predicted}\t{line}\n")
        out.flush()
        n_sentences += len(chunk)
    elapsed = time.time() - started
    log.info(f"classified {'and explained ' * bool(explainer)}{n_sentences} sentences in {elapsed:.2f} s "
             f"({n_sentences / elapsed if elapsed else 0:.1f} sentences/s)")


def explained(classifier, item, scores, ids, words, probabilities=None, single=True):
    """One line's JSON object with --explain: label and score as file mode has them (lists for a multi-label model
    or --top_k, the words then a list per label too), the text (and pair) and every word with its attribution."""
    labels = classifier.labels
    text, pair = item
    answer = ({"label": labels[ids[0]], "score": float(scores[0])} if single else
              {"label": [labels[i] for i in ids], "score": [float(score) for score in scores]})
    answer["text"] = text
    if pair is not None:
        answer["text_pair"] = pair
    answer["words"] = words[0] if single else words
    if probabilities is not None:
        answer["probabilities"] = {label: float(p) for label, p in zip(labels, probabilities)}
    return answer


def check_threshold(args, multi_label):
    if args.threshold is not None and not multi_label:
        raise UserError(f"--threshold: {args.model_fn} is a single-label model (one label per sentence); "
                        "--threshold applies to multi-label models")


def read_lines(stream):
    """Non-blank lines without their line ending: \\n, \\r\\n or a lone \\r, as file mode and the training
    readers end lines (data_load.readers.text_lines); undecodable bytes become U+FFFD instead of stopping."""
    for raw in stream:
        text = raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
        for line in LINE_PIECE.findall(text):
            line = line.rstrip("\r\n")
            if line.startswith("\ufeff"):
                line = line[1:]
            if line.strip():
                yield line


if __name__ == "__main__":
    try:
        exit_on_user_error(main)
    except BrokenPipeError:  # `classify_plm.py ... | head` is not an error
        sys.stderr.close()
