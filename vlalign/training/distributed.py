"""Statistics across data-parallel processes (one process: the identity).

The loop runs under Hugging Face Accelerate, which starts the processes and the ``torch.distributed`` process
group (gloo on CPUs, NCCL on GPUs); these helpers are what a method needs inside ``forward``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes training together."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's index (0 is the main process, the only one that writes files)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def global_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over this process's batch, averaged over every process (equal batch sizes), without
    gradient — for batch statistics such as KTO's reference point z_ref."""
    local = value.detach().float().mean()
    if world_size() > 1:
        local = local.clone()
        dist.all_reduce(local, op=dist.ReduceOp.SUM)
        local /= world_size()
    return local.to(value.dtype)


def gather_with_grad(value: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's ``value`` along dim 0, in rank order, keeping the gradient of this process's
    part (a contrastive loss over the global batch needs the other processes' embeddings)."""
    if world_size() == 1:
        return value
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(value))


def gather(value: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's ``value`` along dim 0, without gradient."""
    if world_size() == 1:
        return value
    parts = [torch.empty_like(value) for _ in range(world_size())]
    dist.all_gather(parts, value.contiguous())
    return torch.cat(parts)


def all_finite(values: torch.Tensor) -> bool:
    """Whether every entry of ``values`` is finite on every process (all processes get the same answer, so they
    stop together)."""
    flag = torch.isfinite(values.detach()).all().to(torch.int32).reshape(1)
    if world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def shutdown() -> None:
    """Leave the process group, every process together, before the interpreter exits (a process that exits while
    gloo's threads are still alive can abort with SIGABRT); the identity with one process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
