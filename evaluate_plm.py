"""Score a fine-tuned model on a labelled file.

Reads --test_fn in any input format the trainers read (same column flags), checks that its labels
are the model's, and prints the scores (the expected calibration error among them) and the per-class
table. Writes metrics.json, confusion_matrix.png, reliability_diagram.png and errors.tsv (the
highest-loss examples) into --output_fn, which appears only when all are written (a finished evaluation there is replaced only by a complete one).
A regression model is scored by Pearson, Spearman, MSE and MAE, with prediction_scatter.png and the
largest errors; long texts are handled as the model was trained unless --long_text says otherwise. The
result is added to the model's card (README.md, from evaluations.json in the model directory).
--explain explains every test row for the label the model printed (inference/explain.py): errors.tsv gets
each wrong row's five strongest words, top_words.tsv and top_words.png each label's words of highest mean
attribution."""
import argparse
from pathlib import Path

from options.parser import (ArgumentParser, add_batch_flags, add_cache_flag, add_column_flags, add_delimiter_flag,
                             add_deprecated_name, add_model_flag, add_runtime_flags, float_range, int_at_least)
from utils.errors import UserError, exit_on_user_error, first_line
from utils.files import atomic_directory
from utils.log import log


def parse_args():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_flag(p)
    p.add_argument("--test_fn", required=True,
                   help="labelled data: `label<TAB>sentence` lines, CSV/TSV with a header, JSONL, Parquet or a "
                        "Dataset.save_to_disk directory")
    # _fn as every path flag of the project (classify_plm.py's --output_fn is a directory too)
    p.add_argument("--output_fn", help="directory the reports go to (default: <model_fn>/evaluation/<test file name>)")
    add_deprecated_name(p, "--output_dir", "--output_fn")
    data = p.add_argument_group("data")
    add_column_flags(data, trained=True)
    add_delimiter_flag(data)
    add_cache_flag(data)
    p.add_argument("--threshold", type=float_range(0, 1), default=None,
                   help="multi-label models: the decision threshold, for every label (default: the one tuned "
                        "when it was trained, or one per label after --threshold_per_label)")
    add_batch_flags(p.add_argument_group("batches"), batch_size=128)
    p.add_argument("--n_errors", type=int_at_least(0), default=50, help="highest-loss examples in errors.tsv")
    add_runtime_flags(p.add_argument_group("runtime"))
    from inference.explain import add_explain_flags
    add_explain_flags(p.add_argument_group("explain (README: Explain)"))
    return p.parse_args()


def main():
    args = parse_args()
    import dataclasses

    from inference.explain import explain_options
    explain = explain_options(vars(args), "torch")  # None without --explain

    from data_load import encode_split
    from data_load.lengths import model_max_length
    from data_load.readers import Labeling
    from data_load.splits import load_labelled
    from training.evaluation import evaluate_saved
    from scoring.report import (RELIABILITY_DIAGRAM, json_text, per_class_table, plot_confusion_matrix,
                              plot_reliability, plot_scatter, plot_top_words, write_errors, write_top_words)
    from checkpoint.model_card import evaluation_result, record_evaluation, refresh_model_card
    from checkpoint.saved_model import load_checkpoint
    from options.training_flags import flag_defaults
    from scoring.metrics import summary_line
    from utils.runtime import choose_device, choose_precision

    output_dir = Path(args.output_fn or Path(args.model_fn) / "evaluation" / Path(args.test_fn).name)
    check_output_dir(output_dir, args.model_fn)
    device = choose_device(args.device)
    precision = choose_precision(args.precision, device)
    tokenizer, model, saved = load_checkpoint(args.model_fn, device)
    labels, multi_label = list(saved.labels), saved.multi_label
    if saved.pairs and not args.text_pair_column:
        log.warning(f"{args.model_fn} was trained on sentence pairs; pass --text_pair_column to give it "
                    "the second sentence")
    for flag in ("threshold", "label_columns"):
        if getattr(args, flag) is not None and not multi_label:
            raise UserError(f"--{flag}: {args.model_fn} is a single-label model; --{flag} applies to multi-label ones")
    label_columns, label_names_fn, label_separator = args.label_columns, args.label_names_fn, args.label_separator
    if multi_label:  # read the file as the training data was read, unless told otherwise (the flags stay as parsed)
        if not args.label_column:
            label_columns = saved.label_columns if label_columns is None else label_columns
            label_names_fn = saved.label_names_fn if label_names_fn is None else label_names_fn
        label_separator = label_separator or saved.label_separator
    labeling = dataclasses.replace(Labeling.from_flags(multi_label, label_separator, label_columns, label_names_fn,
                                                       args.label_column),
                                   numbers=saved.regression)
    split = load_labelled(args.test_fn, (args.text_column, args.text_pair_column, args.label_column), labels,
                          args.cache_dir, labeling, saved.regression, args.delimiter)
    max_length = saved.input_length(args.max_length, model_max_length(model, tokenizer))
    long_text, stride, pooling = saved.long_text_settings(args.long_text, args.stride, args.window_pooling, max_length)
    dataset = encode_split(split, labels, tokenizer, max_length, cache_dir=args.cache_dir, long_text=long_text,
                           stride=stride, regression=saved.regression)

    result = evaluate_saved(model, tokenizer, saved, dataset, args.batch_size, device, precision, args.threshold, pooling)
    metrics = result["metrics"]
    words = table = None
    if explain:
        from data_load.dataset import selected_column
        from inference.explain import Explainer, explain_evaluation, loaded_model
        texts = selected_column(dataset, "text").to_pylist()
        # as the rows were tokenized: a pair column's missing pair is an empty one
        pairs = ([pair or "" for pair in selected_column(dataset, "text_pair").to_pylist()]
                 if "text_pair" in dataset.column_names else [None] * len(texts))
        explainer = Explainer(loaded_model(tokenizer, model, saved, device, precision, max_length, long_text, stride,
                                           pooling, args.batch_size), explain.method, explain.steps)
        log.info(f"explaining {len(texts):,} examples ({explainer.method})")
        words, table = explain_evaluation(explainer, list(zip(texts, pairs)), result)

    try:
        # an earlier evaluation there is replaced only by a complete one; per process: no lock keeps two
        # evaluations from writing the same --output_fn at once
        with atomic_directory(output_dir, per_process=True) as tmp:
            (tmp / "metrics.json").write_text(json_text({
                "model": str(args.model_fn), "test_fn": str(args.test_fn), "max_length": max_length,
                "long_text": long_text, "stride": stride, "window_pooling": pooling, "test": metrics}))
            if "confusion_matrix" in metrics:  # single-label models
                plot_confusion_matrix(metrics["confusion_matrix"], labels, tmp / "confusion_matrix.png")
            if saved.regression:
                plot_scatter(result, tmp / "prediction_scatter.png")
            else:
                plot_reliability(result, tmp / RELIABILITY_DIAGRAM)
            write_errors(tmp / "errors.tsv", result, labels, args.n_errors, words)
            if table is not None:
                write_top_words(tmp / "top_words.tsv", table)
                plot_top_words(table, tmp / "top_words.png")
    except OSError as error:
        raise UserError(f"--output_fn {output_dir}: cannot write the reports ({first_line(error)})") from None

    # the model card lists every evaluation of the model (evaluations.json), wherever its reports went
    refresh_model_card(args.model_fn, flag_defaults(), change=lambda: record_evaluation(
        args.model_fn, evaluation_result(args.test_fn, split.digest, metrics, output_dir, args.model_fn)))
    print(f"{args.test_fn}: {metrics['n_examples']} examples\ntest: {summary_line(metrics)}\n{per_class_table(metrics)}")
    written = "metrics.json, errors.tsv" + (", confusion_matrix.png" if "confusion_matrix" in metrics else "") + (
        ", prediction_scatter.png" if saved.regression else f", {RELIABILITY_DIAGRAM}") + (
        ", top_words.tsv, top_words.png" if table is not None else "")
    log.info(f"\nwrote {written} to {output_dir}")


REPORTS = {"metrics.json", "errors.tsv", "confusion_matrix.png", "prediction_scatter.png", "reliability_diagram.png",
           "top_words.tsv", "top_words.png"}


def check_output_dir(output_dir, model_fn):
    """Only an earlier evaluation is ever replaced: never the model, nor a directory holding anything else."""
    output_dir, model_fn = output_dir.resolve(), Path(model_fn).resolve()
    if output_dir == model_fn or model_fn.is_relative_to(output_dir):
        raise UserError(f"--output_fn {output_dir}: holds the model {model_fn}; choose a directory of its own")
    if output_dir.exists() and (not output_dir.is_dir() or not {p.name for p in output_dir.iterdir()} <= REPORTS):
        raise UserError(f"--output_fn {output_dir}: exists and holds more than an earlier evaluation; choose a new "
                        "directory (an earlier evaluation there would be replaced)")


if __name__ == "__main__":
    exit_on_user_error(main)
