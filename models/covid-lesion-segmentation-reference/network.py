"""The COVID lesion reference segmenter: a tiny 2.5D U-Net (3 adjacent lung-windowed slices in, 3 class logits out).

Input (N, 3, H, W) with H and W multiples of 4; output (N, 3, H, W): background, ground-glass, consolidation.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class LesionNet(nn.Module):
    def __init__(self, widths: tuple[int, int, int] = (12, 24, 48), channels: int = 3, classes: int = 3) -> None:
        super().__init__()
        a, b, c = widths
        self.enc0 = _block(channels, a)
        self.enc1 = _block(a, b, 2)
        self.enc2 = _block(b, c, 2)
        self.dec1 = _block(c + b, b)
        self.dec0 = _block(b + a, a)
        self.head = nn.Conv2d(a, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(x)
        e1 = self.enc1(e0)
        e2 = self.enc2(e1)
        d1 = self.dec1(torch.cat([F.interpolate(e2, scale_factor=2.0, mode="bilinear"), e1], dim=1))
        d0 = self.dec0(torch.cat([F.interpolate(d1, scale_factor=2.0, mode="bilinear"), e0], dim=1))
        return self.head(d0)
