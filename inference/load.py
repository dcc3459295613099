"""The classifier a command asked for: the backend's packages checked, then the torch or the torch-free
ONNX classifier loaded. Apart from inference/classifier.py so that the backends, which subclass its
Classifier, are imported by neither the base class nor each other."""
from utils.errors import UserError, require


def check_backend_installed(args):
    """The packages the chosen backend needs, before any work (file mode loads the classifier in workers)."""
    if args.backend == "onnx":
        require(["onnxruntime", "tokenizers"], "--backend onnx",
                "pip install -r requirements/onnx.txt (or just onnxruntime and tokenizers to classify)")


def load_classifier(args):
    """The chosen backend; torch and transformers are imported only when it is the torch one."""
    if args.backend == "onnx":
        if args.device == "cuda" or args.precision in ("fp16", "bf16"):
            flag = "--device cuda" if args.device == "cuda" else f"--precision {args.precision}"
            raise UserError(f"{flag}: --backend onnx runs on the CPU in fp32 (or --quantize int8); "
                            "use --backend torch for CUDA and half precision")
        check_backend_installed(args)
        from inference.onnx_classifier import OnnxClassifier
        return OnnxClassifier(args.model_fn, args.quantize, args.max_length, args.batch_size, args.max_batch_tokens,
                              args)
    from inference.torch_classifier import TorchClassifier
    return TorchClassifier(args)
