"""Per-rank row ranges of a split, aligned to the store's write units.

Concurrent writers must each own whole write units (stored chunks): two processes
writing disjoint rows of one chunk lose rows (docs/dev/contract.md). A
`torch.utils.data.DistributedSampler` hands each rank strided, padded indices, so the
extraction pass gives each rank one contiguous range of whole units instead.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Dataset, Subset

__all__ = ["rank_row_range", "rank_subset", "rank_loader"]


def rank_row_range(num_rows: int, rank: int, world_size: int, unit_rows: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` that rank ``rank`` writes out of ``num_rows``.

    The ``ceil(num_rows / unit_rows)`` write units are shared out in contiguous runs
    whose sizes differ by at most one unit; the last unit may be short. Every start is
    a multiple of ``unit_rows``, every stop is one too or ``num_rows``, and the ranges
    of ranks 0 .. world_size-1 tile ``[0, num_rows)`` in order. A rank may get an
    empty range (``start == stop``) when there are fewer units than ranks.

    Parameters
    ----------
    num_rows
        N, the rows of the split.
    rank
        0 .. world_size - 1.
    world_size
        Number of writer processes.
    unit_rows
        Rows per write unit (`EpochWriter.write_unit_rows`).

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> [rank_row_range(10, r, 3, 4) for r in range(3)]
    [(0, 4), (4, 8), (8, 10)]
    >>> [rank_row_range(5, r, 3, 4) for r in range(3)]
    [(0, 0), (0, 4), (4, 5)]
    """
    for name, value, low in (("num_rows", num_rows, 0), ("world_size", world_size, 1),
                             ("unit_rows", unit_rows, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank!r}")
    units = -(-num_rows // unit_rows)
    first, last = rank * units // world_size, (rank + 1) * units // world_size
    return min(first * unit_rows, num_rows), min(last * unit_rows, num_rows)


def rank_subset(dataset: Dataset, start: int, stop: int) -> Subset:
    """The items ``start .. stop - 1`` of a map-style dataset, in order."""
    n = len(dataset)  # type: ignore[arg-type]
    if not 0 <= start <= stop <= n:
        raise ValueError(f"rows [{start}, {stop}) are not inside the dataset's {n} items")
    return Subset(dataset, range(start, stop))


def rank_loader(
    dataset: Dataset, start: int, stop: int, *, batch_size: int = 256, **loader_kwargs: Any
) -> DataLoader:
    """A plain, unshuffled DataLoader over items ``start .. stop - 1`` of ``dataset``.

    Parameters
    ----------
    dataset
        A map-style dataset; item ``i`` is ``(x, y)`` or ``(x, y, index)``.
    start, stop
        The rows, e.g. from `rank_row_range`.
    batch_size
        Items per batch.
    **loader_kwargs
        Passed on to `torch.utils.data.DataLoader` (``num_workers``, ``pin_memory``,
        ``collate_fn``, ...); ``shuffle``, ``sampler`` and ``batch_sampler`` are
        refused, since rows must come in order.

    Returns
    -------
    torch.utils.data.DataLoader
    """
    for key in ("shuffle", "sampler", "batch_sampler"):
        if loader_kwargs.get(key):
            raise ValueError(f"rank_loader yields rows in order; {key}= is not accepted")
        loader_kwargs.pop(key, None)
    return DataLoader(rank_subset(dataset, start, stop), batch_size=batch_size, shuffle=False,
                      **loader_kwargs)
