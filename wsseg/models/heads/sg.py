"""Stochastic gate: mixes deep (large receptive field) and shallow (local) features.

Training: each element independently takes the shallow value with probability ψ, otherwise a
rescaled deep value, `m·(x_deep − ψ·x_shallow)/(1−ψ) + (1−m)·x_shallow`, m ~ Bernoulli(1−ψ).
The expectation over m is exactly x_deep, whatever x_shallow is: the gate acts like dropout
that substitutes shallow features, so the deep path cannot rely on any single unit.

Test: **literal** the published model of Araslanov & Roth (CVPR 2020) returns `(1−ψ)·x_deep + ψ·x_shallow`, which is
*not* the training expectation. `test_mix="expectation"` returns x_deep instead.
"""

from __future__ import annotations

import torch
from torch import nn


class StochasticGate(nn.Module):
    def __init__(self, psi: float = 0.3, test_mix: str = "literal"):
        super().__init__()
        if not 0.0 <= psi < 1.0:
            raise ValueError(f"psi must be in [0, 1), got {psi}")
        if test_mix not in ("literal", "expectation"):
            raise ValueError(f"test_mix must be 'literal' or 'expectation', got {test_mix!r}")
        self.psi = psi
        self.test_mix = test_mix

    def forward(self, x_deep, x_shallow):
        psi = self.psi
        if self.training:
            keep_deep = torch.bernoulli(torch.full_like(x_deep, 1.0 - psi))
            return keep_deep * (x_deep - psi * x_shallow) / (1.0 - psi) + (1 - keep_deep) * x_shallow
        if self.test_mix == "literal":
            return (1.0 - psi) * x_deep + psi * x_shallow
        return x_deep

    def extra_repr(self):
        return f"psi={self.psi}, test_mix={self.test_mix!r}"
