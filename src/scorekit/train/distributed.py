"""Joining and leaving a PyTorch process group, for training under ``torchrun``.

``torchrun --nproc_per_node=N`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
:func:`init_distributed` joins the group (nccl with one GPU per local rank when CUDA is
available, gloo on CPU) and :func:`shutdown_distributed` leaves it cleanly.

References:
    Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training",
    VLDB 2020; https://pytorch.org/docs/stable/elastic/run.html.
"""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "shutdown_distributed"]


def init_distributed() -> tuple[int, int, torch.device]:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE > 1``):
    nccl with one GPU per local rank if CUDA is available, else gloo on CPU.
    Returns ``(rank, world_size, device)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    return rank, world, device


def shutdown_distributed() -> None:
    """Leave the process group cleanly: collect garbage (DDP's reducer), wait for every
    rank, destroy the group. Without it a gloo process can abort at exit."""
    if dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
