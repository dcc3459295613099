"""The cores a process may use and the threads each worker gets; seeds, device and precision, and the
process group under torchrun/accelerate launch.

torch and numpy are imported only by the functions that need them: the file mode's torch-free classifier
counts its cores here."""
import contextlib
import os
import random
import signal
from dataclasses import dataclass

from utils.errors import UserError
from utils.log import log


def usable_cpus():
    """The cores this process may run on: its affinity (taskset, a container's or a batch scheduler's
    cpuset), which can be fewer than the machine has (os.cpu_count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_setting():
    """OMP_NUM_THREADS when set to a positive number, else None. torch reads it; onnxruntime does not,
    so its sessions are given it (inference.onnx_classifier.load_session)."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    return int(threads) if threads.isdigit() and int(threads) > 0 else None


def worker_threads(n_workers, cores=None):
    """Intra-op threads each of n_workers processes gets: OMP_NUM_THREADS when set, else the cores (this
    machine's usable ones unless given, e.g. a Ray cluster's) shared out, at least one each."""
    return threads_setting() or max(1, (cores or usable_cpus()) // n_workers)


def set_seed(seed):
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def choose_device(name="auto", local_rank=0):
    import torch
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def choose_precision(precision, device):
    """auto: bf16 on CUDA that supports it, else fp16 on CUDA, else fp32. Half precision needs CUDA:
    on the CPU it would silently train in fp32 (Trainer) or crawl (bf16 autocast), so refuse."""
    import torch
    on_cuda = device.type == "cuda"
    if precision == "auto":
        if not on_cuda:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision in ("fp16", "bf16") and not on_cuda:
        raise UserError(f"--precision {precision} needs a CUDA GPU; none is in use. Use --precision fp32 (or auto)")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this GPU does not support bf16; use fp16")
    return precision


def autocast_context(device, precision):
    """The mixed-precision context for forward passes, built once and reused (as nanoGPT does):
    fp16/bf16 autocast on CUDA, nothing at all in fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch
    return torch.autocast(device.type, dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[precision])


def pad_to_multiple_of(precision):
    """Batch width multiple: 8 in half precision, where tensor cores work on multiples of 8; none in fp32."""
    return None if precision == "fp32" else 8


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world_size > 1

    def barrier(self):
        if self.enabled:
            import torch
            torch.distributed.barrier()

    def gather(self, obj):
        """Every process's object, in rank order, on every process."""
        if not self.enabled:
            return [obj]
        import torch
        gathered = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, obj)
        return gathered


def distributed_context():
    """Read the torchrun / accelerate launch environment; one process when it is absent."""
    return DistributedContext(rank=int(os.environ.get("RANK", 0)),
                              world_size=int(os.environ.get("WORLD_SIZE", 1)),
                              local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def init_process_group(context, device):
    import torch
    if context.enabled and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend=backend)


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM asks the run to stop at the next optimizer step, after saving a
    resumable state; a second Ctrl-C stops at once. Under data parallelism every process agrees on
    the step to stop at, so none waits forever for the others."""

    def __init__(self, context):
        self.context = context
        self.requested = False
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._request)

    def _request(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.context.is_main:
            log.info("\nstopping after this step (Ctrl-C again to stop at once)")

    def agreed(self):
        if not self.context.enabled:
            return self.requested
        import torch
        on_gpu = torch.distributed.get_backend() == "nccl"  # NCCL reduces only GPU tensors
        flag = torch.tensor([1.0 if self.requested else 0.0], device="cuda" if on_gpu else "cpu")
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
