"""The processes of a run: torchrun's environment, the process group, and the few collectives
the trainer needs.

Several processes stay in step only if every one of them takes the same branch at the same
update: a process that enters a collective (a gradient all-reduce, a checkpoint's gather of
random states, a validation broadcast) that the others skip waits for ever. So nothing a process
sees alone (its clock, a signal sent to it) decides anything by itself: `agree` combines the
processes' flags once per update and all of them act on the combined answer.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from transformer.training.errors import TrainingError


@dataclass(frozen=True)
class Distributed:
    """This process's place among the processes started by torchrun (one process: rank 0 of 1),
    and the device it trains on (collectives put their tensors there: NCCL needs CUDA ones)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the processes (float64, so token counts stay exact)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def agree(self, **flags: bool) -> dict[str, bool]:
        """Each flag true if it is true on any process: one small all-reduce for all of them."""
        combined = self.sum([float(v) for v in flags.values()])
        return {name: value > 0 for name, value in zip(flags, combined)}

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value`, in rank order (on every process)."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: Any) -> Any:
        """The main process's `value`, on every process."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device_name: str) -> Distributed:
    """Resolve `device_name` ("auto", "cpu", "cuda") and join the process group that torchrun
    describes in the environment (gloo on CPU, nccl on GPU); one process without torchrun."""
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is cuda but no CUDA device is available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if world_size > 1 else 0
    device = torch.device("cpu")
    if device_name == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if world_size <= 1:
        return Distributed(device=device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device
    )


def close_distributed() -> bool:
    """Leave the process group, if this process joined one (returns whether it had), once a run
    has ended well: on every process (the trainer ends with a barrier), never after a failure,
    where another process may still wait in a collective.

    That alone does not stop gloo's threads once `DistributedDataParallel` has used the group:
    with torch 2.13, two `pt_gloo_runloop` threads and `gloo_tcp_loop` were still running after
    `destroy_process_group` (and after deleting the DDP module), where without DDP they end. They
    then meet the interpreter's shutdown, and a process that had finished and saved everything
    sometimes aborted there ("terminate called without an active exception", exit code -6:
    twice in five runs of the test suite). So `transformer train` under torchrun leaves
    without that shutdown (`exit_now`).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.destroy_process_group()
    return True


def exit_now(code: int) -> NoReturn:
    """End the process with `code` at once, after flushing its output, without the interpreter's
    shutdown (see `close_distributed`). Everything the run writes is closed before this."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
