"""Local fixtures of the STTM tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Run each test on one intra-op thread (restored afterwards).

    The STTM tests make thousands of small tensor calls; on a shared 2-core machine
    the thread pool's hand-offs cost more than the work. Results do not depend on it.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
