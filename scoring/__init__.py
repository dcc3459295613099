"""How a prediction is scored and decided: the metrics every evaluation reports (metrics.py: add one to
SCORES there), sigmoid/softmax and the threshold decision (scores.py), calibration (calibration.py),
which labels to print (decision.py), and the written report (report.py: tables, plots, errors.tsv,
TensorBoard). NumPy and matplotlib only; sits on utils/."""
