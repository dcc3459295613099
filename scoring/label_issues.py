"""Likely label errors from out-of-fold probabilities, with cleanlab's confident learning (Northcutt, Jiang
and Chuang 2021): which rows' given labels are probably wrong, most likely first, what the model suggests
instead, and how many errors of each kind (given -> suggested) the data probably holds.

cleanlab is imported only here (find_label_errors.py; requirements/quality.txt)."""
from dataclasses import dataclass

import numpy as np

FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given")
DEFAULT_FILTER = "prune_by_noise_rate"  # cleanlab's default
MULTI_LABEL_THRESHOLD = 0.5  # the suggested label set: every label at or above it


@dataclass
class LabelIssues:
    """The rows flagged (positions, most likely error first), every row's label quality (0: surely wrong,
    1: surely right), every row's suggested label (single-label: a class id; multi-label: a 0/1 row) and the
    estimated error counts (a table of dicts)."""
    flagged: np.ndarray
    quality: np.ndarray
    suggested: object
    counts: list
    estimated_errors: int


def find_issues(given, probabilities, multi_label, label_names, filter_by=DEFAULT_FILTER):
    """given: class ids (single-label) or lists of class ids (multi-label); probabilities: rows x labels,
    out of fold."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True) if not multi_label else probabilities
    if multi_label:
        return _multi_label_issues(given, probabilities, label_names, filter_by)
    from cleanlab.count import estimate_joint, num_label_issues
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    given = np.asarray(given, dtype=np.int64)
    flagged = find_label_issues(given, probabilities, filter_by=filter_by, return_indices_ranked_by="self_confidence",
                                n_jobs=1)
    quality = get_label_quality_scores(given, probabilities, method="self_confidence")
    suggested = probabilities.argmax(axis=1)
    joint = estimate_joint(given, probabilities)  # p(given, true): x rows = the estimated count of each pair
    n = len(given)
    counts = [{"given": label_names[i], "suggested": label_names[j], "estimated": int(round(joint[i, j] * n)),
               "flagged": int(np.sum((given[flagged] == i) & (suggested[flagged] == j)))}
              for i in range(len(label_names)) for j in range(len(label_names)) if i != j]
    counts.sort(key=lambda row: (-row["estimated"], -row["flagged"]))
    return LabelIssues(np.asarray(flagged, dtype=np.int64), quality, suggested, counts,
                       int(num_label_issues(given, probabilities)))


def _multi_label_issues(given, probabilities, label_names, filter_by):
    from cleanlab.multilabel_classification.filter import find_label_issues, find_multilabel_issues_per_class
    from cleanlab.multilabel_classification.rank import get_label_quality_scores
    given = [list(map(int, row)) for row in given]
    flagged = find_label_issues(given, probabilities, filter_by=filter_by, return_indices_ranked_by="self_confidence",
                                n_jobs=1)
    quality = get_label_quality_scores(given, probabilities)
    suggested = (probabilities >= MULTI_LABEL_THRESHOLD).astype(np.int8)
    # per label, the rows whose given membership looks wrong: what cleanlab's common_multilabel_issues counts,
    # computed here with n_jobs=1, since it has no n_jobs and its pool of forked processes hung in a process
    # that had run torch (the suite's multi-label test waited forever)
    issues, _, _ = find_multilabel_issues_per_class(labels=given, pred_probs=probabilities,
                                                    return_indices_ranked_by="self_confidence", n_jobs=1)
    in_given = np.zeros(probabilities.shape, dtype=bool)
    for row, ids in enumerate(given):
        in_given[row, ids] = True
    counts = []
    for k, label in enumerate(label_names):
        wrong = np.zeros(len(given), dtype=bool)
        wrong[issues[k]] = True
        counts.append({"label": label, "estimated missing": int(np.sum(wrong & ~in_given[:, k])),
                       "estimated extra": int(np.sum(wrong & in_given[:, k]))})
    counts.sort(key=lambda row: -(row["estimated missing"] + row["estimated extra"]))
    return LabelIssues(np.asarray(flagged, dtype=np.int64), quality, suggested, counts,
                       int(sum(row["estimated missing"] + row["estimated extra"] for row in counts)))


def plot_counts(counts, label_names, multi_label, path):
    """A heat-map of the estimated error counts: given (rows) x suggested (columns), or per label its
    estimated missing and extra occurrences (multi-label)."""
    from scoring.report import _pyplot
    plt = _pyplot()
    if multi_label:
        matrix = np.array([[row["estimated missing"], row["estimated extra"]] for row in counts], dtype=float)
        rows, columns = [row["label"] for row in counts], ["missing (suggested, not given)", "extra (given, not suggested)"]
    else:
        index = {label: i for i, label in enumerate(label_names)}
        matrix = np.full((len(label_names), len(label_names)), np.nan)
        for row in counts:
            matrix[index[row["given"]], index[row["suggested"]]] = row["estimated"]
        rows = columns = list(label_names)
    size = max(4.0, 0.45 * max(len(rows), len(columns)) + 2)
    fig, ax = plt.subplots(figsize=(size if not multi_label else 6, size))
    image = ax.imshow(matrix, cmap="Reds")
    ax.set_xticks(range(len(columns)), columns, rotation=45 if not multi_label else 0, ha="right" if not multi_label else "center")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("suggested label" if not multi_label else "")
    ax.set_ylabel("given label" if not multi_label else "label")
    if len(rows) * len(columns) <= 400:
        for (i, j), value in np.ndenumerate(matrix):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8)
    ax.set_title("estimated label errors (confident learning)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
