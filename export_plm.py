"""Export a fine-tuned model to ONNX, for the torch-free classifier (`classify_plm.py --backend onnx`).

Writes two files into the checkpoint directory, next to the PyTorch weights:
  model.onnx       fp32, dynamic batch and sequence axes (torch.onnx.export)
  model.int8.onnx  int8 weights, dynamic activation quantization (onnxruntime.quantization)
Both are compared with the PyTorch model on a few sentences first (the max abs logit difference is
printed); a model that disagrees is not written. Files are written under a temporary name and
renamed, so a crash never leaves a half-written model. transformers.pipeline still loads the
directory as before, and the model card (README.md) gets an ONNX section: the files, their fidelity and a
rough speed figure (onnx_export.json). Needs requirements/onnx.txt (`make setup` installs it)."""
import argparse
import sys

from options.parser import ArgumentParser, add_model_flag
from utils.errors import exit_on_user_error, require


def parse_args():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flag(p)
    p.add_argument("--push_to_hub", metavar="REPO_ID",
                   help="add the ONNX files to this Hugging Face Hub model (already pushed) under onnx/, as Sentence "
                        "Transformers and Optimum read them: onnx/model.onnx, onnx/model_qint8.onnx")
    return p.parse_args()


def main():
    args = parse_args()
    require(["onnx", "onnxscript", "onnxruntime"], "ONNX export", "pip install -r requirements/onnx.txt")
    from checkpoint.model_card import refresh_model_card
    from inference.onnx_export import export
    from options.training_flags import flag_defaults
    repo_id = None
    if args.push_to_hub:  # checked before the export: a token, the Hub, and the model already there
        from checkpoint.publish import check_onnx_repo
        from utils.hub import check_push_access
        repo_id = check_push_access(args.push_to_hub)
        check_onnx_repo(repo_id, args.model_fn)
    export(args.model_fn)
    refresh_model_card(args.model_fn, flag_defaults())  # the card's ONNX section: the files, their fidelity and speed
    if repo_id:
        from checkpoint.publish import push_onnx
        from checkpoint.run_dir import hold_model
        with hold_model(args.model_fn, "export_plm.py --push_to_hub"):  # no training run replaces it meanwhile
            push_onnx(args.model_fn, repo_id, flag_defaults())
    print(f"classify with: python classify_plm.py --model_fn {args.model_fn} --backend onnx [--quantize int8]",
          file=sys.stderr)


if __name__ == "__main__":
    exit_on_user_error(main)
