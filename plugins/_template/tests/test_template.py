from __future__ import annotations

import pytest
import torch
from tokenred_template.reducer import StrideConfig, StrideReducer, stride_indices

from tokenred import ConfigError, ReduceContext, VisualTokens
from tokenred.testing import parametrize_with_checks


@parametrize_with_checks(["template_stride", StrideReducer(StrideConfig(center=True))])
def test_contract(reducer, check):
    check(reducer)


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize(("n", "k"), [(10, 1), (10, 3), (10, 10), (7, 6), (1568, 470)])
def test_stride_indices_are_distinct_sorted_and_in_range(n, k, center):
    idx = stride_indices(n, k, center=center, device=torch.device("cpu"))
    assert idx.shape == (k,), "one index per kept token"
    assert bool((idx[1:] > idx[:-1]).all()), "indices must be strictly increasing"
    assert int(idx.min()) >= 0 and int(idx.max()) < n, "indices must lie in [0, n)"


def test_keeps_every_other_token_at_half_budget():
    feats = torch.arange(8, dtype=torch.float32)[:, None].repeat(1, 4)
    tokens = VisualTokens.from_grid(feats, (2, 2, 2))
    ctx = ReduceContext(budget=4, generator=torch.Generator().manual_seed(0))
    out = StrideReducer().reduce(tokens, ctx)
    assert out.tokens.features[:, 0].tolist() == [0.0, 2.0, 4.0, 6.0]
    assert out.assignment.tolist() == [0, -1, 1, -1, 2, -1, 3, -1]
    centered = StrideReducer(StrideConfig(center=True)).reduce(tokens, ctx)
    assert centered.tokens.features[:, 0].tolist() == [1.0, 3.0, 5.0, 7.0]


def test_bad_config_value_is_one_clear_line():
    with pytest.raises(ConfigError, match=r"^reducer\.center: expected true or false"):
        StrideConfig(center="yes")  # type: ignore[arg-type]
