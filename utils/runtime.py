"""Seeds, device and precision, and the process group under torchrun/accelerate launch."""
import contextlib
import os
import random
import signal
from dataclasses import dataclass

import numpy as np
import torch

from utils.errors import UserError
from utils.log import log


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def choose_device(name="auto", local_rank=0):
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def choose_precision(precision, device):
    """auto: bf16 on CUDA that supports it, else fp16 on CUDA, else fp32. Half precision needs CUDA:
    on the CPU it would silently train in fp32 (Trainer) or crawl (bf16 autocast), so refuse."""
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
            torch.distributed.barrier()

    def gather(self, obj):
        """Every process's object, in rank order, on every process."""
        if not self.enabled:
            return [obj]
        gathered = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, obj)
        return gathered


def distributed_context():
    """Read the torchrun / accelerate launch environment; one process when it is absent."""
    return DistributedContext(rank=int(os.environ.get("RANK", 0)),
                              world_size=int(os.environ.get("WORLD_SIZE", 1)),
                              local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def init_process_group(context, device):
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
        on_gpu = torch.distributed.get_backend() == "nccl"  # NCCL reduces only GPU tensors
        flag = torch.tensor([1.0 if self.requested else 0.0], device="cuda" if on_gpu else "cpu")
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
