"""The DonkeyCar "linear" architecture in PyTorch: 5 convolutions, 2 dense layers, 2 linear outputs."""

from __future__ import annotations

import torch
from torch import nn


class LinearPilot(nn.Module):
    """Input (N, 3, 120, 160) RGB in [0, 1]; outputs angle (N, 1) and throttle (N, 1)."""

    def __init__(self, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = []
        spec = [(3, 24, 5, 2), (24, 32, 5, 2), (32, 64, 5, 2), (64, 64, 3, 1), (64, 64, 3, 1)]
        for cin, cout, k, s in spec:
            layers += [nn.Conv2d(cin, cout, k, s), nn.ReLU(), nn.Dropout(dropout)]
        self.convs = nn.Sequential(*layers)
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(64 * 8 * 13, 100), nn.ReLU(), nn.Dropout(dropout),
                                   nn.Linear(100, 50), nn.ReLU(), nn.Dropout(dropout))
        self.angle = nn.Linear(50, 1)
        self.throttle = nn.Linear(50, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.dense(self.convs(image))
        return self.angle(z), self.throttle(z)
