"""The classifier a command asked for: the backend's packages checked, then the torch or the torch-free
ONNX classifier loaded. Apart from inference/classifier.py so that the backends, which subclass its
Classifier, are imported by neither the base class nor each other."""
from utils.errors import UserError, require


def check_backend_installed(backend):
    """The packages the chosen --backend needs, before any work (file mode loads the classifier in workers)."""
    if backend == "onnx":
        require(["onnxruntime", "tokenizers"], "--backend onnx",
                "pip install -r requirements/onnx.txt (or just onnxruntime and tokenizers to classify)")


def load_classifier(options):
    """The chosen backend (options: inference.classifier.ClassifierOptions); torch and transformers are
    imported only when it is the torch one."""
    if options.backend == "onnx":
        if options.device == "cuda" or options.precision in ("fp16", "bf16"):
            flag = "--device cuda" if options.device == "cuda" else f"--precision {options.precision}"
            raise UserError(f"{flag}: --backend onnx runs on the CPU in fp32 (or --quantize int8); "
                            "use --backend torch for CUDA and half precision")
        check_backend_installed(options.backend)
        from inference.onnx_classifier import OnnxClassifier
        return OnnxClassifier(options)
    from inference.torch_classifier import TorchClassifier
    return TorchClassifier(options)
