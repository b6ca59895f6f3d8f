"""Data-parallel runs: one run's pending samples split over launcher ranks.

``torchrun --nproc-per-node N -m tokenred run ...``, ``accelerate launch -m
tokenred run ...`` and ``srun`` (one task per GPU, or ``srun torchrun``) start N
copies of the same command. Each copy is a *rank*; :meth:`World.current` reads the
launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, or Slurm's
``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` with ``MASTER_ADDR`` set) and
joins the process group. Without a launcher it is a one-rank world and every
method is a no-op, so the runner has one code path.

How a run is shared (see ``docs/scaling.md``):

1. rank 0 opens the store as a single process would (run lock, torn-tail repair,
   quarantine) and shares it (:meth:`~tokenred.results.RunStore.share`); after a
   barrier the other ranks :meth:`~tokenred.results.RunStore.join` it, and after
   a second barrier every rank has read the same recorded ids;
2. every rank computes the same pending list and the same split of it
   (:func:`split_groups`: whole videos, balanced by question count), so no
   message is needed for the assignment and a video's questions (KV reuse, the
   feature read) stay on one rank;
3. each rank loads the model once on its own device(s) and appends its records
   under the store's short append lock; a record is durable when written, so a
   killed run of any size resumes with any other size;
4. a barrier, then rank 0 alone writes ``metrics.json``.

The collectives are object collectives over a gloo group (the default group when
it is gloo; a gloo side group when the default is nccl), so they never touch a
GPU stream that is being timed.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from tokenred.errors import TokenredError

if TYPE_CHECKING:
    from tokenred.adapter import ModelAdapter
    from tokenred.data import Sample
    from tokenred.results import RunStore

log = logging.getLogger(__name__)
T = TypeVar("T")

TIMEOUT_ENV = "TOKENRED_DIST_TIMEOUT"
"""Seconds a collective may wait for the slowest rank (default 3600)."""


class DistributedError(TokenredError):
    """The ranks of a data-parallel run disagree or cannot meet."""


def launcher_name(env: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    """Name the launcher that started this process, from its environment."""
    env = os.environ if env is None else env
    if any(k.startswith("ACCELERATE_") for k in env):
        return "accelerate"  # it starts its ranks through torchrun's agent
    if "TORCHELASTIC_RUN_ID" in env:
        return "torchrun"
    if "SLURM_PROCID" in env and "RANK" not in env:
        return "srun"
    if "WORLD_SIZE" in env:
        return "env"
    return None


def split_groups(groups: Sequence[Sequence[T]], size: int) -> list[list[int]]:
    """Assign whole groups to ``size`` ranks, balanced by their lengths.

    Largest groups first (ties by position), each to the least loaded rank (ties
    to the lowest rank): deterministic, so every rank computes the same split.

    Returns:
        Per rank, the indices of its groups in their original order.
    """
    load = [0] * size
    shares: list[list[int]] = [[] for _ in range(size)]
    for i in sorted(range(len(groups)), key=lambda i: (-len(groups[i]), i)):
        rank = min(range(size), key=lambda r: (load[r], r))
        shares[rank].append(i)
        load[rank] += len(groups[i])
    return [sorted(s) for s in shares]


@dataclass
class World:
    """This process's place among the ranks of a data-parallel launch.

    Attributes:
        rank: Global rank (0 writes the run files and prints).
        size: Number of ranks.
        local_rank: Rank on this node (picks the GPU or group of GPUs).
        local_size: Ranks on this node.
        launcher: ``torchrun``, ``accelerate``, ``srun``, ``env`` or None.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    launcher: str | None = None
    _group: Any = field(default=None, repr=False)

    @classmethod
    def current(cls) -> World:
        """The world of this process; joins the process group on first use."""
        held = _JOINED.get("world")
        if held is not None and _initialized():
            return held
        world = cls._from_env()
        if world.size > 1:
            _JOINED["world"] = world
        return world

    @classmethod
    def _from_env(cls) -> World:
        env = os.environ
        size = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", "1")) or 1)
        if "WORLD_SIZE" not in env and "MASTER_ADDR" not in env:
            size = 1  # a Slurm step without a rendezvous address is not a launch
        if size <= 1:
            return cls()
        rank = int(env.get("RANK", env.get("SLURM_PROCID", "0")))
        local_rank = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", "0")))
        local_size = int(
            env.get("LOCAL_WORLD_SIZE", env.get("SLURM_NTASKS_PER_NODE", "1"))
        )
        return cls(
            rank=rank,
            size=size,
            local_rank=local_rank,
            local_size=max(local_size, 1),
            launcher=launcher_name(env),
            _group=_process_group(rank, size),
        )

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (files, summary, run hooks)."""
        return self.rank == 0

    # ------------------------------------------------------------- collectives
    def barrier(self) -> None:
        """Wait until every rank gets here (no-op alone)."""
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier(group=self._group)

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self._group)
        return out

    def from_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 once every rank is here; all get its result."""
        self.barrier()
        box: list[Any] = [fn() if self.is_main else None]
        if self.size > 1:
            import torch.distributed as dist

            dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]  # type: ignore[no-any-return]

    # ---------------------------------------------------------------- the run
    @contextlib.contextmanager
    def open_store(self, store: RunStore, *, reset: bool) -> Iterator[RunStore]:
        """Open the run's store on every rank, rank 0 first (see module doc).

        Rank 0 takes the run lock (and resets the run for ``output.overwrite``);
        the others join once it has repaired the file, and no rank appends before
        all have read the recorded ids.
        """
        if self.size == 1:
            if reset and store.path.exists():
                with store:
                    store.reset()
            with store:
                yield store
            return
        try:
            if self.is_main:
                if reset and store.path.exists():
                    with store:
                        store.reset()
                store.open().share()
            self.barrier()
            if not self.is_main:
                store.join()
            self.barrier()
            yield store
        finally:
            store.close()

    def share(self, groups: list[list[Sample]]) -> list[list[Sample]]:
        """This rank's video groups of the pending ones all ranks agree on.

        Raises:
            DistributedError: The ranks see different pending samples (different
                configs, data or code on different nodes).
        """
        if self.size == 1:
            return groups
        ids = [s.id for g in groups for s in g]
        digests = self.gather(hashlib.sha256("\n".join(ids).encode()).hexdigest())
        counts = self.gather(len(ids))
        if len(set(digests)) != 1:
            msg = (
                f"the {self.size} ranks see different pending samples (counts "
                f"{counts}); launch every rank with the same config, data and code"
            )
            raise DistributedError(msg)
        mine = split_groups(groups, self.size)[self.rank]
        return [groups[i] for i in mine]

    def place(self, adapter: ModelAdapter) -> None:
        """Point the adapter at this rank's GPU (``cuda`` -> ``cuda:LOCAL_RANK``).

        An explicit ``cuda:N`` or ``cpu`` is left alone; alone, nothing changes.
        """
        config = getattr(adapter, "config", None)
        device = getattr(config, "device", None)
        if self.size == 1 or device not in ("cuda", "auto"):
            return
        import torch

        if torch.cuda.is_available():
            config.device = f"cuda:{self.local_rank % torch.cuda.device_count()}"  # type: ignore[union-attr]

    def describe(self, device: str | None) -> dict[str, Any]:
        """The manifest's ``parallel`` entry; every rank must call it.

        Args:
            device: The device this rank's model runs on (None: it had no work
                and loaded nothing).
        """
        import socket

        rows = self.gather(
            {"rank": self.rank, "host": socket.gethostname(), "device": device}
        )
        kinds = sorted({str(r["device"]).split(":")[0] for r in rows if r["device"]})
        return {
            "world_size": self.size,
            "launcher": self.launcher,
            "ranks": rows,
            "device_kinds": kinds,
            "mixed_devices": len(kinds) > 1,
        }

    def close(self) -> None:
        """Leave the process group (end of the command)."""
        if self.size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        _JOINED.pop("world", None)


_JOINED: dict[str, World] = {}
"""The world this process joined (one process group per process)."""


def _initialized() -> bool:
    import torch.distributed as dist

    return bool(dist.is_initialized())


def _process_group(rank: int, size: int) -> Any:
    """Join the default group (nccl with CUDA, else gloo); return a gloo group."""
    import torch
    import torch.distributed as dist

    seconds = float(os.environ.get(TIMEOUT_ENV, "3600"))
    timeout = datetime.timedelta(seconds=seconds)
    if not dist.is_initialized():
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(size))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        try:
            dist.init_process_group(backend=backend, timeout=timeout)
        except (RuntimeError, ValueError) as exc:
            msg = (
                f"rank {rank} of {size} could not join the process group ({exc}); "
                "check MASTER_ADDR/MASTER_PORT, or launch with torchrun"
            )
            raise DistributedError(msg) from None
    if dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo", timeout=timeout)


__all__ = ["DistributedError", "World", "launcher_name", "split_groups"]
