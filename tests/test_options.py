"""The flags as typed options (in process, no training): each flag defined once, the options frozen and built
without touching the parsed namespace, renamed flags still accepted under their old names."""
import sys

import pytest


def parse_evaluate_flags(monkeypatch, *flags):
    import evaluate_plm
    monkeypatch.setattr(sys, "argv", ["evaluate_plm.py", "--model_fn", "m", "--test_fn", "t.tsv", *flags])
    return evaluate_plm.parse_args()


def test_output_dir_is_the_old_name_of_output_fn(monkeypatch, capsys):
    assert parse_evaluate_flags(monkeypatch, "--output_fn", "reports").output_fn == "reports"
    assert "warning" not in capsys.readouterr().err
    args = parse_evaluate_flags(monkeypatch, "--output_dir", "reports")
    assert args.output_fn == "reports" and not hasattr(args, "output_dir")
    err = capsys.readouterr().err
    assert err.startswith("warning: --output_dir is deprecated: it is now --output_fn") and err.count("\n") == 1
    assert parse_evaluate_flags(monkeypatch).output_fn is None  # neither: the default


def test_help_marks_the_old_name_deprecated(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        parse_evaluate_flags(monkeypatch, "--help")
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--output_fn OUTPUT_FN directory the reports go to" in help_text
    assert "--output_dir OUTPUT_FN deprecated: the old name of --output_fn" in help_text
