"""One process of the DistributedDataParallel test in ``test_ecosystem.py`` (not a test module itself).

``run`` is the entry point of each spawned process. It switches Triton's interpreter on before it imports
triton_lstm, so the training runs on CPU tensors (gloo) through the Triton kernels; importing this module has no
such side effect, so the test can use its data and model too.
"""

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# Tiny sizes: each step runs every kernel launch through the interpreter, in two processes.
IN, H, T, B_PER_RANK, STEPS, LR = 3, 4, 4, 2, 3, 0.5


def make_lstm(seed: int) -> nn.LSTM:
    torch.manual_seed(seed)
    return nn.LSTM(IN, H, num_layers=2)


def shard(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input (T, B_PER_RANK, IN) and target output of one rank at one step; the ranks' shards together are the
    batch (concatenated along dim 1) that a single process would see."""
    generator = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(T, B_PER_RANK, IN, generator=generator), torch.randn(T, B_PER_RANK, H, generator=generator)


def train_step(model, optimizer, x, target):
    output, _ = model(x)
    loss = (output - target).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def run(rank: int, world_size: int, init_method: str, out_dir: str, seed: int) -> None:
    """Train torch.nn.LSTM and then triton_lstm.LSTM (same initial weights) under DDP; every rank saves its final
    state dicts to ``out_dir/{impl}-{rank}.pt``."""
    # A spawned process is fresh: nothing has imported triton yet, so the switch still takes effect.
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton_lstm

    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        for impl in ("torch", "triton"):
            model = make_lstm(seed)
            if impl == "triton":
                model = triton_lstm.convert(model, kernel="step")
            ddp = DistributedDataParallel(model)
            optimizer = torch.optim.SGD(ddp.parameters(), lr=LR)
            for step in range(STEPS):
                train_step(ddp, optimizer, *shard(step, rank))
            torch.save(model.state_dict(), os.path.join(out_dir, f"{impl}-{rank}.pt"))
    finally:
        dist.destroy_process_group()
