"""The COVID lesion reference segmenter: a small 2.5D U-Net (adjacent lung-windowed slices in, 3 class logits out).

Input (N, C, H, W) with H and W multiples of 2 ** (levels - 1); output (N, 3, H, W): background, ground-glass,
consolidation. One level per entry of `widths`; each level halves the resolution.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn as nn
import torch.nn.functional as F


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class LesionNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (12, 24, 48), channels: int = 3, classes: int = 3) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(
            [_block(channels, widths[0])] + [_block(a, b, 2) for a, b in pairwise(widths)])
        self.decoders = nn.ModuleList([_block(deep + skip, skip) for skip, deep in pairwise(widths)])
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        x = skips.pop()
        for decoder in reversed(self.decoders):
            x = decoder(torch.cat([F.interpolate(x, scale_factor=2.0, mode="bilinear"), skips.pop()], dim=1))
        return self.head(x)
