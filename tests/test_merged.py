"""Int8Linear on its own: int8 weights for steps of a few tokens, the float weight for a prefill.
(Served voices against peft, in the real model: tests/test_adapters.py.)"""

import pytest
import torch

from bot.merged import Int8Linear


@pytest.mark.parametrize("bias", [True, False])
def test_a_step_is_close_and_a_prefill_is_exact(bias):
    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 96, bias=bias)
    layer = Int8Linear(dense.weight, dense.bias)
    with torch.no_grad():
        for rows in (1, 4, Int8Linear.MAX_ROWS):
            x = torch.randn(1, rows, 64)
            want = dense(x)
            assert layer(x).shape == want.shape
            assert float((layer(x) - want).abs().max()) < 0.03 * float(want.abs().max()), rows
            assert not torch.equal(layer(x), want)  # int8 weights were used
        x = torch.randn(1, Int8Linear.MAX_ROWS + 1, 64)
        assert torch.equal(layer(x), dense(x))  # a prefill: the float weight
    assert layer.nbytes == 96 * 64 + 96 * 2
