"""UniMatch's feature perturbation (Yang et al., CVPR 2023): the encoder features of some samples
of a batch are dropped out channel-wise (Dropout2d, p = 0.5) before the decoder sees them, so that
the decoder must predict those samples' teacher targets from damaged features.

A segmenter that supports it takes `forward(x, perturb_from=k)`: samples k, k + 1, ... of the
batch are perturbed, the ones before it pass unchanged. Perturbing inside one forward keeps a
single set of BatchNorm statistics for the whole batch, as UniMatch's joint forward does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DROPOUT_P = 0.5


def perturb_rows(features: Tensor, start: int | None) -> Tensor:
    """`features` (N×C×H×W) with rows `start`, `start` + 1, ... dropped out channel-wise; as they
    are for None."""
    if start is None or start >= features.shape[0]:
        return features
    perturbed = F.dropout2d(features[start:], p=DROPOUT_P, training=True)
    return torch.cat([features[:start], perturbed]) if start > 0 else perturbed
