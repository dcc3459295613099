"""LoRA (--lora_r, checkpoint/lora.py) in both trainers, on a tiny BERT built from a config: only the adapters
and the head train, the merged model and base + adapter agree, a killed run resumes, the export matches torch,
and bad LoRA flags are one line each."""
import json
import signal

import pytest
from conftest import ROOT, run_script
from test_bad_input import assert_clean_failure
from test_robustness import freeze_at_state, start

pytestmark = pytest.mark.slow  # runs the real scripts

TRAINERS = ["finetune_plm_native.py", "finetune_plm_hf.py"]
TRAIN_FN = ROOT / "data" / "review.sample.en.tsv"  # 480 lines: 432 train, 48 validation
SENTENCES = [line.split("\t")[1] for line in TRAIN_FN.read_text().splitlines()[:64]]


def lora_args(model_fn, tiny_model, *extra):
    return ["--model_fn", model_fn, "--train_fn", TRAIN_FN, "--pretrained_model_name", tiny_model,
            "--batch_size", 8, "--n_epochs", 1, "--lr", "5e-3", "--lora_r", 4, *extra]  # 54 steps


@pytest.fixture(scope="module")
def lora_models(tmp_path_factory, tiny_model):
    directory = tmp_path_factory.mktemp("lora")
    for script in TRAINERS:
        run_script(script, *lora_args(directory / script, tiny_model))
    return {script: directory / script for script in TRAINERS}


def tensors(path):
    from safetensors.torch import load_file
    return load_file(str(path))


@pytest.mark.parametrize("script", TRAINERS)
def test_only_the_adapters_and_the_head_train(lora_models, tiny_model, script):
    import torch
    model_fn = lora_models[script]
    base = {f"bert.{key}": value for key, value in tensors(tiny_model / "model.safetensors").items()}
    merged = tensors(model_fn / "model.safetensors")
    adapted = [key for key in merged if key.endswith(("query.weight", "value.weight"))]
    head = [key for key in merged if key.startswith(("classifier.", "bert.pooler."))]
    assert len(adapted) == 4 and len(head) == 4  # 2 layers x (query, value); the pooler's and the head's w, b
    for key, value in merged.items():
        if key in head:
            continue
        if key in adapted:  # base + the adapter's B A, which starts at 0 and has moved
            assert not torch.equal(value, base[key]), key
        else:
            assert torch.equal(value, base[key]), f"{key} changed: LoRA must leave it frozen"
    assert not torch.equal(merged["bert.pooler.dense.weight"], base["bert.pooler.dense.weight"])
    record = json.loads((model_fn / "training_args.json").read_text())
    assert record["lora_r"] == 4 and 0 < record["trained_parameters"] < 0.01 * record["all_parameters"]
    adapter = model_fn / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    assert (adapter / "adapter_model.safetensors").stat().st_size < 100_000
    assert not (model_fn / "adapter_config.json").exists()  # transformers would load the base model from it


@pytest.mark.parametrize("script", TRAINERS)
def test_merged_model_equals_base_plus_adapter(lora_models, tiny_model, script):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from checkpoint.saved_model import load_checkpoint
    tokenizer, merged, _ = load_checkpoint(lora_models[script])
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    with_adapter = PeftModel.from_pretrained(base, lora_models[script] / "adapter").eval()
    inputs = tokenizer(SENTENCES, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        expected, got = with_adapter(**inputs).logits, merged(**inputs).logits
        with with_adapter.disable_adapter():
            without = with_adapter(**inputs).logits
    assert torch.allclose(expected, got, atol=1e-5)
    assert (without - got).abs().max() > 1e-2, "the comparison needs an adapter that changes the outputs"


def test_lora_export_matches_torch(lora_models):
    model_fn = lora_models["finetune_plm_native.py"]
    run_script("export_plm.py", "--model_fn", model_fn)
    stdin = "\n".join(SENTENCES) + "\n"
    torch_out = run_script("classify_plm.py", "--model_fn", model_fn, "--with_prob", stdin=stdin).stdout.splitlines()
    onnx_out = run_script("classify_plm.py", "--model_fn", model_fn, "--with_prob", "--backend", "onnx",
                          stdin=stdin).stdout.splitlines()
    assert len(torch_out) == len(onnx_out) == len(SENTENCES)
    for a, b in zip(onnx_out, torch_out):
        assert a.split("\t")[0] == b.split("\t")[0]
        assert float(a.split("\t")[1]) == pytest.approx(float(b.split("\t")[1]), abs=1e-3)


@pytest.mark.parametrize("script", TRAINERS)
def test_lora_resumes_after_a_kill(tmp_path, tiny_model, lora_models, script):
    model_fn = tmp_path / "model"
    args = lora_args(model_fn, tiny_model, "--n_epochs", 2, "--save_every", 20)
    with open(tmp_path / "log", "w") as log:
        process = start(script, args, log)
        step = freeze_at_state(model_fn, 60, process)  # into the second epoch
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert step % 54 != 0 and not model_fn.exists()
    resumed = run_script(script, *args, "--resume")
    assert "resuming from" in resumed.stderr
    record = json.loads((model_fn / "training_args.json").read_text())
    assert record["optimizer_steps"] == 2 * 54
    assert (model_fn / "adapter" / "adapter_model.safetensors").exists()
    # the resumed run trained the adapters it restored: the accuracy of the uninterrupted 1-epoch run or better
    one_epoch = json.loads((lora_models[script] / "metrics.json").read_text())["valid"]["accuracy"]
    assert json.loads((model_fn / "metrics.json").read_text())["valid"]["accuracy"] >= one_epoch - 0.1


@pytest.mark.parametrize("flags, message", [
    (["--lora_r", "0"], "argument --lora_r: 0 is out of range"),
    (["--lora_r", "-4"], "argument --lora_r: -4 is out of range"),
    (["--lora_alpha", "16"], "--lora_alpha: LoRA is off; add --lora_r"),
    (["--lora_target_modules", "query"], "--lora_target_modules: LoRA is off; add --lora_r"),
    (["--lora_r", "4", "--freeze_encoder"], "--freeze_encoder trains the head alone"),
    (["--lora_r", "4", "--lora_target_modules", "query,q_proj"], "q_proj matches no layer of this bert model"),
    # LayerNorm is not a layer LoRA can adapt
    (["--lora_r", "4", "--lora_target_modules", "LayerNorm"], "peft cannot add LoRA to this bert model"),
])
def test_bad_lora_flags(tmp_path, tiny_model, flags, message):
    model_fn = tmp_path / "model"
    result = run_script("finetune_plm_native.py", "--model_fn", model_fn, "--train_fn", TRAIN_FN,
                        "--pretrained_model_name", tiny_model, "--max_steps", 1, *flags, check=False)
    assert_clean_failure(result, message)
    assert not model_fn.exists() and not list(tmp_path.glob(".model*"))


def test_lora_on_a_model_without_default_targets(tmp_path):
    """A family with no default (MobileBERT): one line that says to name the layers."""
    from transformers import AutoTokenizer, MobileBertConfig, MobileBertModel

    from utils.hub import default_model_path
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    directory = tmp_path / "mobilebert"
    MobileBertModel(MobileBertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, embedding_size=32,
                                     intra_bottleneck_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, num_feedforward_networks=1)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    result = run_script("finetune_plm_native.py", "--model_fn", tmp_path / "model", "--train_fn", TRAIN_FN,
                        "--pretrained_model_name", directory, "--max_steps", 1, "--lora_r", 4, check=False)
    assert_clean_failure(result, "no default LoRA target modules for model type 'mobilebert'")
    assert not (tmp_path / "model").exists()


def test_distill_refuses_lora(tmp_path, lora_models):
    result = run_script("distill_plm.py", "--teacher_fn", lora_models["finetune_plm_native.py"], "--model_fn",
                        tmp_path / "student", "--train_fn", TRAIN_FN, "--lora_r", 4, check=False)
    assert_clean_failure(result, "--lora_r: distill_plm.py trains its student in full")


def test_search_over_lora_rank(tmp_path, tiny_model):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"lora_r": {"choices": [2, 4]}, "lr": 0.005, "n_epochs": 1}))
    model_fn = tmp_path / "searched"
    run_script("finetune_plm_native.py", "--model_fn", model_fn, "--train_fn", TRAIN_FN, "--pretrained_model_name",
               tiny_model, "--hp_search", 2, "--hp_space", space, "--seed", 1)
    record = json.loads((model_fn / "training_args.json").read_text())
    rank = record["hp_search"]["values"]["lora_r"]
    assert rank in (2, 4) and record["lora_r"] == rank
    assert json.loads((model_fn / "adapter" / "adapter_config.json").read_text())["r"] == rank
