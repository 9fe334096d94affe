"""PatchGAN discriminator (pix2pix NLayerDiscriminator shape: ndf 64, 3 strided layers, 70×70 patches).

Its instance norms run in fp32 under autocast; the logits are cast to fp32 before the loss (train.py).
"""

from __future__ import annotations

from torch import nn

from comcoco.sahm.precision import InstanceNorm32


class PatchGAN(nn.Module):
    """Scores overlapping patches of an RGB image in [0, 1]; returns logits (B, 1, h, w)."""

    def __init__(self, ndf: int = 64, n_layers: int = 3, in_ch: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                InstanceNorm32(ndf * mult, affine=True),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x * 2.0 - 1.0)
