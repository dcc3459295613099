"""The ecosystem's habits on real (tiny) runs: a run repeated from its training_args.json, the same metric
names and parameters in MLflow from both trainers (a local SQLite store, read back with mlflow.search_runs),
W&B's offline run files, and --push_to_hub after training against a stand-in Hub on 127.0.0.1."""
import json

import pytest
from conftest import ROOT, run_script
from fake_hub import FakeHub

pytestmark = pytest.mark.slow  # trains the tiny model

TRAIN = ROOT / "data" / "review.sample.en.tsv"


def tiny_run(script, model_fn, tiny_model, *flags, check=True):
    return run_script(script, "--model_fn", model_fn, "--train_fn", TRAIN, "--pretrained_model_name", tiny_model,
                      "--n_epochs", 2, "--max_train_samples", 120, "--batch_size", 16,
                      "--few_shot", "off", *flags, check=check)  # 120 rows would take the recipe's pair phase: seconds


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny_model):
    """A native run reporting to MLflow and W&B, an hf run of the same flags reporting to MLflow (one local
    SQLite store), and the native run repeated from its training_args.json."""
    directory = tmp_path_factory.mktemp("tracked")
    environment = {"MLFLOW_TRACKING_URI": f"sqlite:///{directory}/mlflow.db", "MLFLOW_EXPERIMENT_NAME": "tests",
                   "WANDB_MODE": "offline", "WANDB_DIR": str(directory), "WANDB_SILENT": "true"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in environment.items():
            patch.setenv(key, value)
        results = [tiny_run("finetune_plm_native.py", directory / "native", tiny_model, "--report_to",
                            "tensorboard,mlflow,wandb"),
                   tiny_run("finetune_plm_hf.py", directory / "hf", tiny_model, "--report_to", "mlflow")]
        import mlflow
        mlflow.set_tracking_uri(environment["MLFLOW_TRACKING_URI"])
        runs = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    repeated = run_script("finetune_plm_native.py", "--config", directory / "native" / "training_args.json",
                          "--model_fn", directory / "again", "--report_to", "none")
    for result in results:  # every tracker closed cleanly (TensorBoard's files before the model moved into place)
        assert "warning" not in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    return {"dir": directory, "runs": {run.data.tags["mlflow.runName"]: run for run in runs}, "repeated": repeated}


def test_mlflow_has_the_same_names_and_flags_from_both_trainers(tracked):
    runs = tracked["runs"]
    assert set(runs) == {"native-native", "hf-hf"} and all(run.info.status == "FINISHED" for run in runs.values())
    native, hf = runs["native-native"].data, runs["hf-hf"].data
    assert set(native.metrics) == set(hf.metrics)
    assert {"train/loss", "train/learning_rate", "epoch/train_loss", "epoch/valid_accuracy", "epoch/valid_macro_f1",
            "valid/accuracy", "valid/ece"} <= set(native.metrics)
    differ = {"model_fn", "report_to"}
    assert set(native.params) == set(hf.params) and {key: value for key, value in native.params.items()
                                                     if key not in differ} == {key: value for key, value in
                                                                               hf.params.items() if key not in differ}
    assert native.params["n_epochs"] == "2" and native.params["batch_size"] == "16"
    # the final scores are the saved model's
    metrics = json.loads((tracked["dir"] / "native" / "metrics.json").read_text())
    assert native.metrics["valid/accuracy"] == pytest.approx(metrics["valid"]["accuracy"])
    import mlflow
    history = mlflow.MlflowClient(f"sqlite:///{tracked['dir']}/mlflow.db").get_metric_history(
        runs["native-native"].info.run_id, "epoch/valid_accuracy")
    assert [point.step for point in history] == [1, 2]


def test_wandb_writes_its_offline_run(tracked):
    runs = list((tracked["dir"] / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    records = b"".join(path.read_bytes() for path in runs[0].glob("run-*.wandb"))  # what `wandb sync` uploads
    for name in (b"n_epochs", b"epoch/valid_accuracy", b"train/loss", b"valid/macro_f1"):
        assert name in records, name


def test_a_run_repeats_from_its_training_args(tracked):
    first = json.loads((tracked["dir"] / "native" / "training_args.json").read_text())
    again = json.loads((tracked["dir"] / "again" / "training_args.json").read_text())
    ignore = {"model_fn", "config", "report_to", "finished_at", "versions"}
    assert {k: v for k, v in again.items() if k not in ignore} == {k: v for k, v in first.items() if k not in ignore}
    assert again["config"] == str(tracked["dir"] / "native" / "training_args.json")
    history = [json.loads((tracked["dir"] / name / "history.json").read_text()) for name in ("native", "again")]
    assert [row["valid_loss"] for row in history[0]] == pytest.approx([row["valid_loss"] for row in history[1]])


def test_push_after_training_and_the_onnx_files(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        model_fn = tmp_path / "review"
        result = tiny_run("finetune_plm_native.py", model_fn, tiny_model, "--push_to_hub", "review", "--hub_private")
        files = hub.repos["tester/review"]["files"]
        assert hub.repos["tester/review"]["private"] and {"model.safetensors", "README.md", "training_args.json"} <= set(files)
        assert files["model.safetensors"] == (model_fn / "model.safetensors").read_bytes()
        assert "pushed" in result.stderr and 'model="tester/review"' in files["README.md"].decode()

        export = run_script("export_plm.py", "--model_fn", model_fn, "--push_to_hub", "tester/review")
        assert {"onnx/model.onnx", "onnx/model_qint8.onnx"} <= set(files), export.stderr
        assert "## ONNX" in files["README.md"].decode()

        hub.fail = "/commit/"  # the Hub refuses the next push: the model stays, the line says how to push it
        again = tmp_path / "again"
        result = tiny_run("finetune_plm_native.py", again, tiny_model, "--push_to_hub", "tester/again", check=False)
        assert result.returncode == 2 and (again / "model.safetensors").is_file()
        assert result.stderr.strip().splitlines()[-1].startswith(
            f"error: --push_to_hub tester/again: the push failed (") and f"hf upload tester/again {again} ." in result.stderr
