"""Whether a model's probabilities mean what they say, and temperature scaling to make them (Guo et al.
2017, "On Calibration of Modern Neural Networks"). NumPy (and SciPy to fit) only.

Calibration error is measured on the probabilities the model prints: single-label, the top class's
probability against whether that class is right; multi-label, every label's sigmoid against whether the
label is there (each (text, label) pair a prediction, as a per-label threshold reads them). Temperature
scaling divides the logits by one number T fitted on validation to minimise its log-loss: it changes
how sure the model says it is, never which class is most probable."""
import numpy as np

from scoring.scores import log_softmax, sigmoid, softmax

N_BINS = 15  # equal-width confidence bins, as Guo et al.
TEMPERATURE_RANGE = (0.05, 20.0)  # searched on a log scale
# Fewer validation examples than this say too little about how sure the model should be: a temperature fitted
# on 1-2 of them went to the end of the range, and every later probability to 1.0000.
MIN_FIT_EXAMPLES = 20


def confidences(logits, gold, multi_label):
    """(confidence, correct) pairs, flat: what calibration is measured on (see the module's note)."""
    logits = np.asarray(logits, dtype=np.float64)
    if multi_label:
        return sigmoid(logits).ravel(), np.asarray(gold).astype(bool).ravel()
    probabilities = softmax(logits)
    return probabilities.max(axis=-1), probabilities.argmax(axis=-1) == np.asarray(gold)


def reliability_bins(logits, gold, multi_label, n_bins=N_BINS):
    """Per confidence bin [(lower edge, mean confidence, accuracy, count)], empty bins left out."""
    confidence, correct = confidences(logits, gold, multi_label)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)  # a confidence of 1.0 goes in the last bin
    rows = []
    for b in range(n_bins):
        members = bins == b
        if members.any():
            rows.append((b / n_bins, float(confidence[members].mean()), float(correct[members].mean()),
                         int(members.sum())))
    return rows


def expected_calibration_error(logits, gold, multi_label, n_bins=N_BINS):
    """ECE: the mean gap |accuracy - confidence| over the bins, weighted by how many predictions each holds
    (0 is perfectly calibrated; 0.1 means the stated confidence is off by 10 points on average)."""
    rows = reliability_bins(logits, gold, multi_label, n_bins)
    total = sum(count for *_, count in rows)
    return float(sum(count * abs(accuracy - mean) for _, mean, accuracy, count in rows) / max(total, 1))


def log_loss(logits, gold, multi_label):
    """Mean negative log-likelihood of the gold labels (multi-label: binary, over every label)."""
    logits = np.asarray(logits, dtype=np.float64)
    if multi_label:
        gold = np.asarray(gold, dtype=np.float64)
        return float((np.logaddexp(0, logits) - gold * logits).mean())
    return float(-log_softmax(logits)[np.arange(len(logits)), np.asarray(gold)].mean())


def fit_temperature(logits, gold, multi_label):
    """The T > 0 for which logits / T have the lowest log-loss on these (validation) examples. The log-loss
    of logits scaled by 1/T is convex in 1/T, so a bounded scalar search finds the one minimum."""
    from scipy.optimize import minimize_scalar
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) == 0:
        return 1.0
    low, high = np.log(TEMPERATURE_RANGE)
    found = minimize_scalar(lambda log_t: log_loss(logits / np.exp(log_t), gold, multi_label),
                            bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return round(float(np.exp(found.x)), 4)


def calibration_temperature(logits, gold, multi_label):
    """(T, None): the temperature fitted on these (validation) examples; or (None, why) when they cannot fix
    one and the model's probabilities are better left as they are: too few examples, a single-label set of one
    class (it says how sure to be of that class alone), or a log-loss that keeps falling to an end of the
    range searched (the model right on every example: any temperature looks better the surer it makes the
    model; or wrong on every one) instead of having a minimum inside it."""
    n = len(logits)
    if n < MIN_FIT_EXAMPLES:
        return None, f"{n} validation example{'s' * (n != 1)}, fewer than the {MIN_FIT_EXAMPLES} a fit needs"
    if not multi_label and len(np.unique(np.asarray(gold))) < 2:
        return None, "the validation examples are all of one class"
    temperature = fit_temperature(logits, gold, multi_label)
    low, high = TEMPERATURE_RANGE
    if temperature <= low * 1.001:
        return None, (f"on validation the log-loss keeps falling down to the lowest temperature searched, {low:g} (the "
                      "model is right on (almost) every example, so nothing there says how sure it should be)")
    if temperature >= high * 0.999:
        return None, (f"on validation the log-loss keeps falling up to the highest temperature searched, {high:g} "
                      "(the model is wrong on (almost) every example)")
    return temperature, None
