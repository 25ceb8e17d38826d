"""Small attention models shared by several test files."""

from __future__ import annotations

import torch

from analysis import capture


def residual_mha_capture(embed: int, n_tokens: int, seed: int):
    """The capture of ``x + MHA(x)`` (one head, batch first) on one random sequence."""
    torch.manual_seed(seed)
    mha = torch.nn.MultiheadAttention(embed, 1, batch_first=True)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = mha

        def forward(self, x):
            return x + self.attn(x, x, x)[0]

    return capture(Net(), torch.randn(1, n_tokens, embed), progress=False)["attn"]
