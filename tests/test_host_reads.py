"""tokenred.testing.record_host_reads: the CPU proxy for CUDA host syncs."""

from __future__ import annotations

import torch

from tokenred.testing import record_host_reads


def test_reads_back_are_recorded_with_the_calling_line() -> None:
    x = torch.arange(12.0)
    mask = x > 5
    with record_host_reads() as reads:
        y = (x * 2 + 1).sum()  # arithmetic only: no read
        assert len(reads) == 0
        float(y)  # scalar read
        x.nonzero()  # output sized by the data
        x[mask]  # boolean-mask indexing
        x.tolist()  # one copy to the host
        torch.unique(x)
        x.repeat_interleave(torch.full((12,), 2))  # tensor repeats, no output_size
        x.repeat_interleave(2)  # int repeats: static size
        x.repeat_interleave(torch.full((12,), 2), output_size=24)
    ops = [r.op for r in reads]
    assert len(ops) == 6, ops
    assert "aten.tolist" in ops and "aten.nonzero" in ops
    assert all(r.filename == __file__ for r in reads), reads
    assert all("synchronizing CUDA operation" in r.message for r in reads)


def test_nothing_is_recorded_after_the_block_and_tolist_is_restored() -> None:
    original = torch.Tensor.tolist
    with record_host_reads() as reads:
        pass
    torch.arange(3).tolist()
    assert reads == [] and torch.Tensor.tolist is original
