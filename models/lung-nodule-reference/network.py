"""The lung-nodule reference detector: a small 3D U-Net giving each voxel a nodule logit.

Findings are the connected components of its probability map (the manifest's `segmentation-components`
decoding): score = the component's peak probability, centre = probability-weighted centroid, diameter =
that of the sphere whose volume is the summed probability. Input: one channel, HU windowed to [0, 1] at
2 mm isotropic voxels; spatial sizes must be multiples of 8.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
        nn.Conv3d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
    )


class NoduleNet(nn.Module):
    def __init__(self, widths: tuple[int, int, int, int] = (8, 16, 32, 48)) -> None:
        super().__init__()
        a, b, c, d = widths
        self.enc0 = _block(1, a)
        self.enc1 = _block(a, b, 2)
        self.enc2 = _block(b, c, 2)
        self.enc3 = _block(c, d, 2)
        self.dec2 = _block(d + c, c)
        self.dec1 = _block(c + b, b)
        self.dec0 = nn.Sequential(nn.Conv3d(b + a, a, 3, 1, 1, bias=False), nn.BatchNorm3d(a), nn.ReLU(inplace=True))
        self.head = nn.Conv3d(a, 1, 1)
        nn.init.constant_(self.head.bias, -4.0)  # nodules are rare: start near p = 0.02

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(x)
        e1 = self.enc1(e0)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2.0, mode="nearest"), e2], dim=1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), e1], dim=1))
        d0 = self.dec0(torch.cat([F.interpolate(d1, scale_factor=2.0, mode="nearest"), e0], dim=1))
        return self.head(d0)
