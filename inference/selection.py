"""classify_plm.py --select N: the N texts of an unlabelled file the model is least sure of, written with
their scores in a table the trainers read back once the `label` column is filled in (scoring.uncertainty
scores and picks them). Either backend; --diversity needs the sentence embeddings, which only the torch
backend's model gives (the ONNX export outputs logits alone)."""
import csv
import json
from pathlib import Path

import numpy as np

from scoring.uncertainty import select, uncertainty
from utils.errors import UserError, first_line
from utils.log import log

OUTPUT_KINDS = {".csv": "csv", ".jsonl": "jsonl", ".tsv": "tsv", ".txt": "tsv"}


def add_selection_flags(parser):
    from options.parser import int_at_least
    from scoring.uncertainty import STRATEGIES
    group = parser.add_argument_group(
        "which texts to label next (--select N with --input_fn FILE and --output_fn FILE.csv|.jsonl|.tsv)")
    group.add_argument("--select", type=int_at_least(1), default=None, metavar="N",
                       help="write the N texts of --input_fn (unlabelled) the model is least sure of into --output_fn, "
                            "most uncertain first, with an empty `label` column to fill in, `predicted` and "
                            "`uncertainty`; the trainers read the file back once labelled (.csv, .jsonl: as it is; "
                            ".tsv: with --text_column text --label_column label)")
    group.add_argument("--strategy", choices=STRATEGIES, default="margin",
                       help="margin: the smallest gap between the two most probable labels; entropy: the flattest "
                            "probabilities; random: a seeded random sample (the baseline)")
    group.add_argument("--diversity", action="store_true",
                       help="keep the N apart: k-means (N clusters) over the sentence embeddings of the 10 x N most "
                            "uncertain texts, then the most uncertain text of each cluster (torch backend)")
    group.add_argument("--seed", type=int_at_least(0), default=42, help="seeds --strategy random and --diversity")


def check_selection_flags(args):
    if args.select is None:
        if args.diversity or args.strategy != "margin":
            raise UserError("--strategy and --diversity choose texts to label: add --select N")
        return False
    if not args.input_fn or not args.output_fn:
        raise UserError("--select N: give the unlabelled texts as --input_fn FILE and the file to write as "
                        "--output_fn FILE.csv (or .jsonl, .tsv)")
    if Path(args.output_fn).suffix.lower() not in OUTPUT_KINDS:
        raise UserError(f"--output_fn {args.output_fn}: --select writes a table: name it .csv, .jsonl or .tsv")
    if Path(args.output_fn).is_dir():
        raise UserError(f"--output_fn {args.output_fn}: is a directory; --select writes one file")
    if args.diversity and args.backend != "torch":
        raise UserError("--diversity clusters the model's sentence embeddings, which the ONNX export does not output: "
                        "use --backend torch (the default), or drop --diversity")
    if args.with_prob or args.top_k or args.threshold is not None:
        raise UserError("--with_prob, --top_k and --threshold are for classifying; --select writes the uncertainty "
                        "and the predicted label")
    return True


def select_texts(args, classifier):
    """Classify --input_fn (in chunks of --chunk_size), score every text, pick and write --select of them."""
    from data_load.splits import DataOptions, load_unlabelled
    if classifier.regression:
        raise UserError(f"--select: {args.model_fn} is a regression model; uncertainty sampling needs class "
                        "probabilities")
    if not Path(args.input_fn).is_file():
        raise UserError(f"--input_fn {args.input_fn}: no such file (--select reads one file of unlabelled texts)")
    texts = load_unlabelled(args.input_fn, DataOptions(train_fn=args.input_fn, text_column=args.text_column,
                                                       text_pair_column=args.text_pair_column),
                            pairs=classifier.pairs)
    n = len(texts)
    rows = texts.rows
    probabilities, embeddings = [], []
    for start in range(0, n, args.chunk_size):
        chunk = rows[start:start + args.chunk_size]
        items = list(zip(chunk["text"], chunk["text_pair"] if classifier.pairs else [None] * len(chunk["text"])))
        if args.diversity:
            logits, vectors = classifier.logits_and_embeddings(items)
            embeddings.append(vectors)
        else:
            logits = classifier.logits(items)
        from scoring.scores import probabilities_of
        probabilities.append(probabilities_of(logits, classifier.multi_label))
    probabilities = np.concatenate(probabilities)
    scores = uncertainty(probabilities, args.strategy, classifier.multi_label, args.seed)
    chosen, clusters = select(scores, args.select, np.concatenate(embeddings) if args.diversity else None, args.seed)
    shown_scores = scores if args.strategy != "random" else uncertainty(probabilities, "margin", classifier.multi_label)
    labels = classifier.labels
    records = []
    for rank, position in enumerate(chosen):
        row = rows[int(position)]
        if classifier.multi_label:
            predicted = classifier.label_separator.join(
                labels[i] for i in np.flatnonzero(probabilities[position] >= np.asarray(classifier.threshold)))
        else:
            predicted = labels[int(probabilities[position].argmax())]
        records.append({"text": row["text"], **({"text_pair": row["text_pair"]} if classifier.pairs else {}),
                        "label": "", "predicted": predicted, "uncertainty": round(float(shown_scores[position]), 6),
                        "line": row["line"], **({"cluster": int(clusters[rank])} if clusters is not None else {})})
    write_table(Path(args.output_fn), records)
    log.info(f"selected {len(records)} of {n} texts ({args.strategy}{', diverse' if args.diversity else ''}) into "
             f"{args.output_fn}: fill in `label`, then add them to the training data")


def write_table(path, records):
    kind = OUTPUT_KINDS[path.suffix.lower()]
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8", newline="") as f:
            if kind == "jsonl":
                f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
            elif records:
                writer = csv.DictWriter(f, fieldnames=list(records[0]), delimiter="," if kind == "csv" else "\t",
                                        lineterminator="\n")
                writer.writeheader()
                writer.writerows(records)
        temporary.replace(path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise UserError(f"--output_fn {path}: cannot write ({first_line(error)})") from None
