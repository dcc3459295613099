"""Find the training rows whose labels are probably wrong, from the out-of-fold probabilities of a --cv run
(finetune_plm_native.py/_hf.py --cv K), with cleanlab's confident learning (Northcutt et al. 2021).

Writes, into --output_fn (default: the directory of --oof):
  label_issues.tsv         the rows flagged, most likely error first: rank, file, line, text, given label,
                           the label the model suggests, and the label quality (0: surely wrong, 1: surely right)
  label_error_counts.tsv   the estimated number of errors of each kind: given -> suggested (multi-label: per
                           label, occurrences probably missing and probably extra)
  label_error_counts.png   the same as a heat-map
--fix drop|relabel also writes a copy of the training file without the flagged rows, or with the suggested
label on them, in the file's own format (the input is never changed): train the same command on it to
compare. A --cv run on the same data is needed first:

  python finetune_plm_native.py --model_fn models/cv --train_fn train.tsv --cv 5
  python find_label_errors.py --oof models/cv/oof_predictions.parquet --fix drop"""
import argparse
import csv
import json
from pathlib import Path

from options.parser import ArgumentParser, int_at_least
from utils.errors import UserError, exit_on_user_error, first_line, require
from utils.log import log

ISSUES_FILE = "label_issues.tsv"
COUNTS_FILE = "label_error_counts.tsv"
COUNTS_PLOT = "label_error_counts.png"
METADATA_KEY = b"finetune_plm"  # training.cross_validation.OOF_METADATA_KEY (not imported: it pulls in torch)


def parse_args():
    from scoring.label_issues import DEFAULT_FILTER, FILTERS
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--oof", required=True, metavar="FILE",
                   help="oof_predictions.parquet, written by finetune_plm_native.py/_hf.py --cv K into its --model_fn")
    p.add_argument("--output_fn", metavar="DIR", help="where the tables, the plot and the --fix copy go (default: the "
                                                      "directory of --oof)")
    p.add_argument("--train_fn", help="the training file the --cv run read (default: the path it recorded); its "
                                      "content must be the same (checked by its digest). Needed by --fix")
    p.add_argument("--filter_by", choices=FILTERS, default=DEFAULT_FILTER,
                   help="cleanlab's rule for which rows are issues (cleanlab.filter.find_label_issues); the "
                        "ranking is by self-confidence, the out-of-fold probability of the given label")
    p.add_argument("--fix", choices=["drop", "relabel"],
                   help="also write a copy of the training file with the flagged rows dropped, or relabelled with "
                        "the suggested label (multi-label: the labels at or above 0.5)")
    p.add_argument("--fixed_fn", help="the --fix copy (default: <output_fn>/<training file name>.fixed<extension>)")
    p.add_argument("--show", type=int_at_least(0), default=10, help="flagged rows printed (all are in the table)")
    return p.parse_args()


def main():
    args = parse_args()
    require(["cleanlab"], "find_label_errors.py", "pip install -r requirements/quality.txt")
    table, meta = read_oof(args.oof)
    output = Path(args.output_fn) if args.output_fn else Path(args.oof).parent
    train_fn = check_training_file(args, meta)
    import numpy as np
    from scoring.label_issues import find_issues, plot_counts
    from scoring.report import format_table
    labels, multi_label = meta["labels"], meta["multi_label"]
    index = {label: i for i, label in enumerate(labels)}
    given_text = table.column("label").to_pylist()
    given = [[index[label] for label in row] for row in given_text] if multi_label else [index[label] for label in given_text]
    probabilities = np.stack(table.column("probabilities").to_numpy(zero_copy_only=False)) if len(table) else None
    if probabilities is None:
        raise UserError(f"--oof {args.oof}: holds no rows")
    issues = find_issues(given, probabilities, multi_label, labels, args.filter_by)

    def suggested(row):
        if multi_label:
            return [labels[i] for i in np.flatnonzero(issues.suggested[row])]
        return labels[int(issues.suggested[row])]

    lines = table.column("line").to_pylist()
    texts = table.column("text").to_pylist()
    files = table.column("file").to_pylist()
    rows = []
    for rank, row in enumerate(issues.flagged, 1):
        rows.append({"rank": rank, "file": files[row], "line": lines[row], "text": texts[row],
                     "given": _shown(given_text[row]), "suggested": _shown(suggested(row)),
                     "quality": round(float(issues.quality[row]), 4)})
    try:
        output.mkdir(parents=True, exist_ok=True)
        write_tsv(output / ISSUES_FILE, rows, ["rank", "file", "line", "text", "given", "suggested", "quality"])
        write_tsv(output / COUNTS_FILE, issues.counts, list(issues.counts[0]) if issues.counts else ["given"])
        plot_counts(issues.counts, labels, multi_label, output / COUNTS_PLOT)
    except OSError as error:
        raise UserError(f"--output_fn {output}: cannot write ({first_line(error)})") from None
    n = len(table)
    print(f"{len(rows)} of {n} rows flagged ({len(rows) / n:.1%}); confident learning estimates {issues.estimated_errors} "
          f"label errors in all. Most likely first ({output / ISSUES_FILE}):")
    if rows and args.show:
        shown = [{**row, "text": row["text"][:60]} for row in rows[:args.show]]
        print(format_table(shown, ["rank", "line", "given", "suggested", "quality", "text"]))
    print(f"\nestimated errors by kind ({output / COUNTS_FILE}, {COUNTS_PLOT}):")
    print(format_table(issues.counts[:10], list(issues.counts[0])) if issues.counts else "(none)")
    if args.fix:
        write_fix(args, meta, train_fn, output, issues, rows, lines, suggested)


def read_oof(path):
    """(table, metadata) of an oof_predictions.parquet; anything else is one line."""
    import pyarrow.parquet as pq
    if not Path(path).is_file():
        raise UserError(f"--oof {path}: no such file: run finetune_plm_native.py/_hf.py --cv K first; it writes "
                        "oof_predictions.parquet into its --model_fn")
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow's own error types
        raise UserError(f"--oof {path}: not a readable Parquet file ({first_line(error)})") from None
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    needed = {"file", "line", "text", "label", "probabilities"}
    if raw is None or not needed <= set(table.column_names):
        raise UserError(f"--oof {path}: not an oof_predictions.parquet written by --cv (no {METADATA_KEY.decode()} "
                        "metadata or columns): pass the one in the --cv run's --model_fn")
    return table, json.loads(raw)


def check_training_file(args, meta):
    """The training file the --cv run read, checked by content: --train_fn, or the recorded path. None when
    neither is given nor there (only --fix needs it)."""
    from utils.files import file_digest
    path = args.train_fn or meta["train_fn"]
    if not Path(path).is_file():
        if args.train_fn or args.fix:
            raise UserError(f"--train_fn {path}: no such file" + ("" if args.train_fn else
                            f" (the training file --oof {args.oof} was made from): pass it with --train_fn"))
        return None
    digest = file_digest(path)
    if digest != meta["digest"]:
        raise UserError(f"--oof {args.oof} was made from other data than {path} (its content has another digest): "
                        "run --cv again on this file, or pass --train_fn the file it was made from")
    return path


def write_fix(args, meta, train_fn, output, issues, rows, lines, suggested):
    from data_load.rewrite import write_fixed_copy
    source = Path(train_fn)
    target = Path(args.fixed_fn) if args.fixed_fn else output / f"{source.stem}.fixed{source.suffix}"
    if target.resolve() == source.resolve():
        raise UserError(f"--fixed_fn {target}: is the training file, which --fix never changes: choose another file")
    changes = {lines[row]: (None if args.fix == "drop" else suggested(row)) for row in issues.flagged}
    try:
        write_fixed_copy(source, target, meta["columns"], changes)
    except OSError as error:
        target.unlink(missing_ok=True)
        raise UserError(f"--fixed_fn {target}: cannot write ({first_line(error)})") from None
    except UserError:
        target.unlink(missing_ok=True)
        raise
    done = "without" if args.fix == "drop" else "relabelled:"
    log.info(f"\nwrote {target}: {source} {done} the {len(changes)} flagged rows; train on it with the same flags "
             "to compare")


def _shown(label):
    return ",".join(label) if isinstance(label, list) else label


def write_tsv(path, rows, columns):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t", lineterminator="\n", extrasaction="ignore",
                                quoting=csv.QUOTE_MINIMAL)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    exit_on_user_error(main)
