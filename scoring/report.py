"""What a run leaves behind to judge the model: metrics, history, plots, worst errors (the trackers, TensorBoard
among them, are scoring/trackers.py).

Both trainers call these with the same inputs, so their artefacts are identical in form."""
import csv
import json
import warnings
from pathlib import Path

import numpy as np

from scoring.calibration import N_BINS, reliability_bins
from scoring.metrics import binary_losses, example_losses, scalar_metrics, summary_line
from scoring.scores import at_threshold, log_softmax, sigmoid


def json_text(value):
    """Strict JSON: a score that is undefined here (NaN, e.g. macro ROC-AUC when no label has both
    positive and negative examples) is written as null, which every JSON reader accepts."""
    def strict(item):
        if isinstance(item, float) and item != item:
            return None
        if isinstance(item, dict):
            return {key: strict(inner) for key, inner in item.items()}
        if isinstance(item, (list, tuple)):
            return [strict(inner) for inner in item]
        return item
    return json.dumps(strict(value), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def history_row(epoch, step, train_loss, valid_metrics, lr, epoch_time):
    """One evaluation in history.json: `valid_<name>` for every single-number metric."""
    return {"epoch": epoch, "step": step, "train_loss": train_loss,
            **{f"valid_{name}": value for name, value in scalar_metrics(valid_metrics).items()},
            "lr": lr, "epoch_time_s": epoch_time}


def row_metrics(row):
    """The validation metrics of a history row, by their metric names."""
    return {key[len("valid_"):]: value for key, value in row.items() if key.startswith("valid_")}


def format_table(rows, columns):
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1e-3 and value else f"{value:.4f}"
        return str(value)
    cells = [[cell(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(column), *(len(r[i]) for r in cells)) for i, column in enumerate(columns)]
    lines = ["  ".join(column.rjust(w) for column, w in zip(columns, widths))]
    lines += ["  ".join(value.rjust(w) for value, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def per_class_table(metrics):
    if "per_class" not in metrics:  # regression: one number, no classes
        return ""
    rows = [{"label": name, **values} for name, values in metrics["per_class"].items()]
    per_label_threshold = ("threshold",) if rows and "threshold" in rows[0] else ()  # --threshold_per_label
    return format_table(rows, ("label", "precision", "recall", "f1", "support", *per_label_threshold))


def write_report(directory, history, label_names, valid, test=None, n_errors=50):
    """Write metrics.json, history.json, learning_curve.png, confusion_matrix.png (single-label),
    reliability_diagram.png (classes) or prediction_scatter.png (regression) and errors.tsv.

    `valid` and `test` are dicts {"metrics", "logits", "labels", "texts"} (training.finish.evaluation);
    the confusion matrix and error list come from the test set when there is one."""
    directory = Path(directory)
    final = test or valid
    metrics = {"valid": valid["metrics"]}
    if test:
        metrics["test"] = test["metrics"]
    (directory / "metrics.json").write_text(json_text(metrics))
    (directory / "history.json").write_text(json_text(history))
    plot_learning_curve(history, directory / "learning_curve.png")
    if "confusion_matrix" in final["metrics"]:  # single-label; multi-label has its per-label table
        plot_confusion_matrix(final["metrics"]["confusion_matrix"], label_names, directory / "confusion_matrix.png")
    if final["metrics"].get("regression"):
        plot_scatter(final, directory / "prediction_scatter.png")
    else:
        plot_reliability(final, directory / RELIABILITY_DIAGRAM)
    write_errors(directory / "errors.tsv", final, label_names, n_errors)

    print("\n" + format_table(history, list(history[0]) if history else []))
    for split, result in (("valid", valid), ("test", test)):
        if result:
            print(f"\n{split}: {summary_line(result['metrics'])}\n{per_class_table(result['metrics'])}")


def write_errors(path, result, label_names, n, words=None):
    """The n highest-loss examples, worst first: where mislabelled data and hard cases show up. words: {row:
    text} for a last `words` column (evaluate_plm.py --explain: a wrong row's strongest words)."""
    if result["metrics"].get("multi_label"):
        return write_multi_label_errors(path, result, label_names, n, words)
    if result["metrics"].get("regression"):
        return write_regression_errors(path, result, n, words)
    labels = np.asarray(result["labels"])
    losses = example_losses(result["logits"], labels)
    probabilities = np.exp(log_softmax(result["logits"]))
    predictions = probabilities.argmax(axis=-1)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(["loss", "gold", "predicted", "p_gold", "text"] + ["words"] * (words is not None))
        for i in np.argsort(-losses, kind="stable")[:n]:
            writer.writerow([f"{losses[i]:.4f}", label_names[labels[i]], label_names[predictions[i]],
                             f"{probabilities[i, labels[i]]:.4f}", result["texts"][i]] + _words(words, i))


def _words(words, i):
    """errors.tsv's `words` cell of row i (none without --explain)."""
    return [] if words is None else [words.get(int(i), "")]


def write_multi_label_errors(path, result, label_names, n, words=None):
    """errors.tsv for multi-label examples: gold and predicted label sets (`, `-separated; `-` for none)."""
    gold = np.asarray(result["labels"])
    losses = binary_losses(result["logits"], gold)
    predicted = at_threshold(sigmoid(result["logits"]), result["metrics"]["threshold"])  # one, or one per label

    def names(row):
        return ", ".join(label_names[j] for j in np.flatnonzero(row)) or "-"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(["loss", "gold", "predicted", "text"] + ["words"] * (words is not None))
        for i in np.argsort(-losses, kind="stable")[:n]:
            writer.writerow([f"{losses[i]:.4f}", names(gold[i]), names(predicted[i]), result["texts"][i]]
                            + _words(words, i))


def write_regression_errors(path, result, n, words=None):
    """errors.tsv for regression: the largest absolute errors first, gold and predicted numbers."""
    gold = np.asarray(result["labels"], dtype=np.float64)
    predicted = np.asarray(result["logits"], dtype=np.float64)[:, 0]  # evaluation() made them label units
    errors = np.abs(predicted - gold)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(["abs_error", "gold", "predicted", "text"] + ["words"] * (words is not None))
        for i in np.argsort(-errors, kind="stable")[:n]:
            writer.writerow([f"{errors[i]:.4f}", f"{gold[i]:.4g}", f"{predicted[i]:.4f}", result["texts"][i]]
                            + _words(words, i))


def write_top_words(path, table):
    """top_words.tsv (evaluate_plm.py --explain): per label, its words by mean attribution. table: {label:
    [(word, mean attribution, count)]}."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(["label", "rank", "word", "mean_attribution", "count"])
        for label, words in table.items():
            for rank, (word, mean, count) in enumerate(words, 1):
                writer.writerow([label, rank, word, f"{mean:.4g}", count])


def plot_top_words(table, path, n=10):
    """A panel per label: its n words of highest mean attribution, as horizontal bars (a quick look at what
    each class leans on, shortcuts included)."""
    plt = _pyplot()
    labels = [label for label, words in table.items() if words]
    if not labels:
        labels = list(table)[:1]
    columns = min(3, max(1, len(labels)))
    rows = -(-len(labels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(max(6.0, 4.2 * columns), 0.32 * n * rows + 1.2 * rows), dpi=100,
                             squeeze=False)
    for ax in axes.ravel()[len(labels):]:
        ax.axis("off")
    for ax, label in zip(axes.ravel(), labels):
        words = table.get(label, [])[:n][::-1]
        # the page's colours: towards the label green, against it red
        ax.barh([w for w, _, _ in words], [m for _, m, _ in words],
                color=["#1a9641" if m >= 0 else "#d73027" for _, m, _ in words])
        ax.set_title(str(label), fontsize=10)
        ax.tick_params(labelsize=8)
        ax.set_xlabel("mean attribution", fontsize=8)
    fig.suptitle("Words of highest mean attribution, by predicted label", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_scatter(result, path):
    """Regression: predicted against gold, one dot per example, with the diagonal of perfect predictions."""
    plt = _pyplot()
    gold = np.asarray(result["labels"], dtype=np.float64)
    predicted = np.asarray(result["logits"], dtype=np.float64)[:, 0]
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=100)
    ax.scatter(gold, predicted, s=6, alpha=0.4)
    low, high = float(min(gold.min(), predicted.min())), float(max(gold.max(), predicted.max()))
    ax.plot([low, high], [low, high], "--", color="gray", linewidth=1)
    metrics = result["metrics"]
    ax.set_title(f"Predicted vs gold (Pearson {metrics['pearson']:.3f}, Spearman {metrics['spearman']:.3f})")
    ax.set_xlabel("gold")
    ax.set_ylabel("predicted")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


RELIABILITY_DIAGRAM = "reliability_diagram.png"


def plot_reliability(result, path):
    """Reliability diagram: per confidence bin, how often the model is right against how sure it says it is
    (on the diagonal, 0.8 means right 8 times in 10); with a temperature (--calibrate), the model's curve
    before it too. Bars: the share of predictions in each bin."""
    plt = _pyplot()
    metrics, multi_label = result["metrics"], bool(result["metrics"].get("multi_label"))
    curves = [("calibrated" if "temperature" in metrics else "model", result["logits"], metrics["ece"])]
    if "temperature" in metrics:
        curves.insert(0, ("before the temperature", np.asarray(result["logits"]) * metrics["temperature"],
                          metrics["ece_uncalibrated"]))
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(5.5, 6.5), dpi=100, sharex=True,
                                     gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfectly calibrated")
    for (name, logits, ece), marker in zip(curves, "so"):
        rows = reliability_bins(logits, result["labels"], multi_label)
        ax.plot([mean for _, mean, _, _ in rows], [accuracy for _, _, accuracy, _ in rows], marker + "-",
                label=f"{name} (ECE {ece:.3f})")
    rows = reliability_bins(result["logits"], result["labels"], multi_label)
    total = sum(count for *_, count in rows)
    counts.bar([low for low, *_ in rows], [count / total for *_, count in rows], width=1 / N_BINS, align="edge",
               color="tab:gray")
    what = "each label's probability" if multi_label else "the top class's probability"
    ax.set_ylabel("share right")
    ax.set_title(f"Reliability: {what}" + (f", temperature {metrics['temperature']:.2f}" if "temperature" in metrics else ""))
    ax.legend(loc="upper left")
    counts.set_xlabel("stated confidence")
    counts.set_ylabel("share of predictions")
    counts.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_learning_curve(history, path):
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ax.plot(epochs, [row["train_loss"] for row in history], "o-", label="train loss")
    ax.plot(epochs, [row["valid_loss"] for row in history], "s-", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if len(epochs) <= 20:  # one tick per evaluation (fractional epochs with --eval_steps)
        ax.set_xticks(epochs)
    accuracy_axis = ax.twinx()
    score = "accuracy" if not history or "valid_accuracy" in history[0] else "spearman"  # regression: Spearman
    accuracy_axis.plot(epochs, [row[f"valid_{score}"] for row in history], "^--", color="tab:green",
                       label=f"validation {score}")
    accuracy_axis.set_ylabel(score)
    lines = ax.get_lines() + accuracy_axis.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")
    ax.set_title("Learning curve")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion_matrix(matrix, label_names, path):
    """Row-normalised (each row sums to 1: recall on the diagonal), real label names."""
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=float)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(label_names)
    fig, ax = plt.subplots(figsize=confusion_figure_size(n), dpi=100)
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(label_names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticklabels(label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if normalised[i, j] > 0.5 else "black")
    ax.set_title("Confusion matrix (row-normalised)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def confusion_figure_size(n_labels):
    """Inches (width, height): grows with the label count so ~20 names stay readable."""
    height = min(4 + 0.45 * n_labels, 14)
    return height + 1, height


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt
    try:
        import koreanize_matplotlib  # noqa: F401  bundles NanumGothic, so Hangul label names render
    except ImportError:
        pass
    # Without a Hangul font, matplotlib draws boxes and warns once per glyph; boxes are acceptable.
    warnings.filterwarnings("ignore", message="Glyph .* missing from font")
    return plt
