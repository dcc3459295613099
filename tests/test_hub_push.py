"""--push_to_hub: the refusals before any work, and the upload as huggingface_hub sends it, recorded by a
stand-in Hub on 127.0.0.1 (tests/fake_hub.py; the real Hub is out of reach here and was never pushed to)."""
import json

import pytest
from fake_hub import FakeHub
from test_model_card import saved_model

from checkpoint.model_card import CARD, HUB_RECORD, ONNX_RECORD
from checkpoint.publish import check_onnx_repo, push_model, push_onnx
from options.training_flags import flag_defaults
from utils.errors import UserError
from utils.hub import check_push_access

TOKEN = "hf_test_token"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no token file of the machine's
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake


def refused(repo_id):
    with pytest.raises(UserError) as error:
        check_push_access(repo_id)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"--push_to_hub {repo_id}: ")
    return message


def test_push_access_is_checked_before_anything_starts(hub, monkeypatch):
    assert check_push_access("review") == "tester/review"  # a bare name goes to the token's user
    assert check_push_access("team/review") == "team/review"
    assert "cannot write to someone (writes to: tester, team)" in refused("someone/review")
    assert "not a repository id" in refused("a/b/c")
    hub.role = "read"
    assert "the token is read-only" in refused("tester/review")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    assert "refused the token: log in again" in refused("tester/review")
    monkeypatch.delenv("HF_TOKEN")
    assert "no Hugging Face token: log in with `hf auth login`" in refused("tester/review")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE is set" in refused("tester/review")


def test_an_unreachable_hub_is_one_line(monkeypatch, tmp_path):
    import socket
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert f"the Hub at http://127.0.0.1:{port} does not answer" in refused("tester/review")


def test_the_model_directory_is_uploaded_with_a_card_naming_the_repository(hub, tmp_path):
    from huggingface_hub import ModelCard
    model_fn = saved_model(tmp_path / "review")
    (model_fn / ".review.lock").write_text("")  # hidden files stay local
    (model_fn / "runs").mkdir()
    (model_fn / "runs" / "events.out.tfevents.1").write_bytes(b"tb")
    push_model(model_fn, "tester/review", True, flag_defaults())
    repo = hub.repos["tester/review"]
    assert repo["private"] is True
    assert set(repo["files"]) == {"README.md", "config.json", "model.safetensors", "training_args.json", "metrics.json",
                                  "history.json", "learning_curve.png", "confusion_matrix.png", "reliability_diagram.png",
                                  "runs/events.out.tfevents.1"}
    assert repo["files"]["training_args.json"] == (model_fn / "training_args.json").read_bytes()
    card = ModelCard(repo["files"]["README.md"].decode())
    assert card.data.model_name == "tester/review"
    assert 'pipeline("text-classification", model="tester/review")' in card.text
    assert json.loads((model_fn / HUB_RECORD).read_text())["repo_id"] == "tester/review"  # the local card says it too
    assert "hf download tester/review" in (model_fn / CARD).read_text()
    assert all(headers.get("authorization") == f"Bearer {TOKEN}" for _, _, headers, _ in hub.requests)


def test_a_failed_push_keeps_the_model_and_says_how_to_push_it(hub, tmp_path):
    model_fn = saved_model(tmp_path / "review")
    files = sorted(p.name for p in model_fn.iterdir())
    hub.fail = "/commit/"
    with pytest.raises(UserError) as error:
        push_model(model_fn, "tester/review", False, flag_defaults())
    message = str(error.value)
    assert f"the model is saved in {model_fn}: push it with `hf upload tester/review {model_fn} . --exclude '.*'" in message
    assert set(files) <= {p.name for p in model_fn.iterdir()} and (model_fn / "model.safetensors").exists()


def test_onnx_files_go_under_onnx(hub, tmp_path):
    model_fn = saved_model(tmp_path / "review")
    with pytest.raises(UserError, match="no such model on the Hub: push the model first"):
        check_onnx_repo("tester/review", model_fn)
    push_model(model_fn, "tester/review", False, flag_defaults())
    check_onnx_repo("tester/review", model_fn)
    (model_fn / "model.onnx").write_bytes(b"fp32 graph")
    (model_fn / "model.int8.onnx").write_bytes(b"int8 graph")
    (model_fn / ONNX_RECORD).write_text(json.dumps({"opset": 23, "files": {}, "speed_note": "rough"}))
    push_onnx(model_fn, "tester/review", flag_defaults())
    files = hub.repos["tester/review"]["files"]
    assert files["onnx/model.onnx"] == b"fp32 graph" and files["onnx/model_qint8.onnx"] == b"int8 graph"
    assert "`onnx/model_qint8.onnx`" in files["README.md"].decode()


@pytest.mark.parametrize("script", ["finetune_plm_native.py", "finetune_plm_hf.py", "distill_plm.py"])
def test_a_trainer_without_a_token_refuses_before_anything(script, monkeypatch, tmp_path):
    from conftest import ROOT, run_script
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    model_fn = tmp_path / "models" / "review"
    teacher = ["--teacher_fn", tmp_path / "teacher"] if script == "distill_plm.py" else []
    result = run_script(script, "--model_fn", model_fn, "--train_fn", ROOT / "data" / "review.sample.en.tsv",
                        *teacher, "--push_to_hub", "me/review", check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --push_to_hub me/review: no Hugging Face token: log in with `hf auth login` (or set HF_TOKEN to a "
        "token with write access), then run this again; nothing was started"]
    assert not (tmp_path / "models").exists()


def test_a_missing_tracker_is_one_line(monkeypatch, capsys):
    """--report_to mlflow without mlflow installed (as if): the pip command, before anything runs."""
    import importlib.util

    from options.training_flags import training_parser
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else find_spec(name, *a))
    with pytest.raises(SystemExit) as exit:
        training_parser("t").parse_args(["--model_fn", "m", "--train_fn", "t", "--report_to", "tensorboard,mlflow"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --report_to mlflow needs mlflow, which is not installed: pip install -r requirements/tracking.txt "
        "(see --help)"]
    with pytest.raises(SystemExit):
        training_parser("t").parse_args(["--model_fn", "m", "--train_fn", "t", "--report_to", "mlflw"])
    assert "'mlflw': expected some of tensorboard, mlflow, wandb separated by commas, or none" in capsys.readouterr().err
    args = training_parser("t").parse_args(["--model_fn", "m", "--train_fn", "t", "--report_to", "none"])
    assert args.report_to == ()
    assert training_parser("t").parse_args(["--model_fn", "m", "--train_fn", "t"]).report_to == ("tensorboard",)
