"""How the processes of one recording talk: rank, world size, barrier, agreement.

Recording one epoch from several processes (DDP ranks) needs barriers (rank 0 has
created the epoch; everyone has written) that are also agreements ("did any rank
fail or overflow?", a MAX reduction of a status code), so that a failure on one rank
ends the epoch on every rank instead of leaving the others waiting at a barrier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.distributed as dist

__all__ = ["Communicator", "LocalCommunicator", "TorchCommunicator", "CallbackCommunicator",
           "resolve_communicator"]


@runtime_checkable
class Communicator(Protocol):
    """The collective operations a multi-process recording needs.

    Attributes
    ----------
    rank : int
        This process, 0 .. world_size - 1; rank 0 begins and finalizes epochs.
    world_size : int
        Number of processes writing each epoch.
    """

    rank: int
    world_size: int

    def barrier(self) -> None:
        """Return once every process has called it."""

    def reduce_max(self, value: int) -> int:
        """The largest ``value`` over the processes (a collective call)."""


class LocalCommunicator:
    """One process: rank 0 of 1; barriers do nothing."""

    rank = 0
    world_size = 1

    def barrier(self) -> None:
        """Nothing to wait for."""

    def reduce_max(self, value: int) -> int:
        """``value`` itself."""
        return int(value)


class TorchCommunicator:
    """Collectives of an initialized ``torch.distributed`` process group.

    Parameters
    ----------
    group
        The process group; default the global one.
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "torch.distributed is not initialized (call init_process_group first)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def barrier(self) -> None:
        """``torch.distributed.barrier`` on the group."""
        dist.barrier(group=self.group)

    def reduce_max(self, value: int) -> int:
        """A MAX all-reduce of one integer (it also synchronises the processes)."""
        # NCCL reduces only CUDA tensors; gloo and mpi reduce CPU tensors.
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend(self.group) == "nccl"
            else torch.device("cpu")
        )
        tensor = torch.tensor([int(value)], dtype=torch.int64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.group)
        return int(tensor.item())


class CallbackCommunicator:
    """Collectives supplied by the caller (any launcher: multiprocessing, MPI, ...).

    Parameters
    ----------
    rank, world_size
        This process and the number of processes.
    barrier
        Returns once every process has called it.
    reduce_max
        ``reduce_max(value) -> int``: the largest integer passed by any process (a
        collective call). Without it the processes cannot learn of a failure
        elsewhere: `reduce_max` then waits at a barrier and returns this process's own
        value. A failing rank still raises, and rank 0 still refuses to finalize an
        epoch with rows missing (`EpochWriter.finalize` checks), but the other ranks
        return normally, and a rank failing before the epoch's first barrier can leave
        the others waiting. ``on_overflow="float32"`` with several processes needs it.
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        barrier: Callable[[], object],
        reduce_max: Callable[[int], int] | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(
                f"rank must be in 0..world_size-1, got rank={rank}, world_size={world_size}")
        self.rank = int(rank)
        self.world_size = int(world_size)
        self._barrier = barrier
        self._reduce_max = reduce_max
        #: Whether `reduce_max` really agrees across processes.
        self.agrees = reduce_max is not None or world_size == 1

    def barrier(self) -> None:
        """Call the barrier callable."""
        self._barrier()

    def reduce_max(self, value: int) -> int:
        """``reduce_max(value)``, or a barrier and ``value`` when there is none."""
        if self._reduce_max is not None:
            return int(self._reduce_max(int(value)))
        self._barrier()
        return int(value)


def resolve_communicator(
    *,
    rank: int | None = None,
    world_size: int | None = None,
    barrier: Callable[[], object] | None = None,
    reduce_max: Callable[[int], int] | None = None,
    communicator: Communicator | None = None,
) -> Communicator:
    """The communicator a recorder uses, from its arguments.

    In order: ``communicator`` if given; a `CallbackCommunicator` when ``barrier`` is
    given (``rank`` and ``world_size`` then required); a `TorchCommunicator` when
    ``torch.distributed`` is initialized; else one process (`LocalCommunicator`).

    Raises
    ------
    ValueError
        On a contradiction (several processes announced without a way to synchronise
        them, or a rank that disagrees with torch.distributed).
    """
    if communicator is not None:
        if any(v is not None for v in (rank, world_size, barrier, reduce_max)):
            raise ValueError(
                "pass either communicator or rank/world_size/barrier/reduce_max, not both")
        return communicator
    if barrier is not None:
        if rank is None or world_size is None:
            raise ValueError("a barrier callable needs rank and world_size")
        return CallbackCommunicator(rank, world_size, barrier, reduce_max)
    if reduce_max is not None:
        raise ValueError("reduce_max needs a barrier callable too")
    if dist.is_available() and dist.is_initialized():
        comm = TorchCommunicator()
        if (rank is not None and rank != comm.rank) or (
            world_size is not None and world_size != comm.world_size
        ):
            raise ValueError(
                f"rank={rank}, world_size={world_size} disagree with torch.distributed "
                f"(rank {comm.rank} of {comm.world_size})"
            )
        return comm
    if (world_size or 1) > 1:
        raise ValueError(
            f"world_size={world_size} without torch.distributed initialized needs a "
            "barrier callable (barrier=...) to synchronise the processes"
        )
    if rank not in (None, 0):
        raise ValueError(f"rank={rank} in a single-process recording")
    return LocalCommunicator()
