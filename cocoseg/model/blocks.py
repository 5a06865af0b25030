"""Building blocks of the YOLOv8-seg family (spec section 2).

All blocks take and return NCHW float tensors. Attribute names (``conv``, ``bn``, ``cv1``,
``cv2``, ``m``, ``upsample``) are part of the checkpoint format: they give the reference
state-dict keys, so reference weights load with a plain ``load_state_dict``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["C2f", "DFL", "Bottleneck", "Conv", "Proto", "SPPF", "fuse_conv_bn"]

# The reference sets these on every BatchNorm after construction (not PyTorch's defaults).
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


class Conv(nn.Module):
    """Conv2d (no bias, 'same' padding for odd k) -> BatchNorm2d -> SiLU.

    (B, c_in, H, W) -> (B, c_out, H / stride, W / stride). After :meth:`fuse` the BN is folded
    into the convolution (which then has a bias) and ``bn`` becomes an identity.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> None:
        """Fold the BatchNorm (eval statistics) into the convolution, in place."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = nn.Identity()


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d computing ``bn(conv(x))`` with BN in eval mode (running statistics)."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (c_out,)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


class Bottleneck(nn.Module):
    """Conv 3x3 -> Conv 3x3 at constant width c, plus the input when ``shortcut``."""

    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = Conv(channels, channels, 3)
        self.cv2 = Conv(channels, channels, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class C2f(nn.Module):
    """CSP block with two convolutions and ``n`` chained bottlenecks (hidden width c2 / 2).

    (B, c_in, H, W) -> (B, c_out, H, W). Every intermediate (both halves of ``cv1`` and the
    output of each bottleneck) is concatenated before ``cv2``.
    """

    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool) -> None:
        super().__init__()
        hidden = int(0.5 * c_out)
        self.cv1 = Conv(c_in, 2 * hidden, 1)
        self.cv2 = Conv((2 + n) * hidden, c_out, 1)
        self.m = nn.ModuleList(Bottleneck(hidden, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x).chunk(2, dim=1))
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools (stride 1), shape-preserving."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 5) -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = Conv(c_in, hidden, 1)
        self.cv2 = Conv(hidden * 4, c_out, 1)
        self.m = nn.MaxPool2d(kernel, stride=1, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        p1 = self.m(x)
        p2 = self.m(p1)
        p3 = self.m(p2)
        return self.cv2(torch.cat((x, p1, p2, p3), dim=1))


class Proto(nn.Module):
    """Mask prototypes from the P3 feature: (B, c_in, H/8, W/8) -> (B, nm, H/4, W/4), SiLU-activated."""

    def __init__(self, c_in: int, hidden: int, num_masks: int = 32) -> None:
        super().__init__()
        self.cv1 = Conv(c_in, hidden, 3)
        self.upsample = nn.ConvTranspose2d(hidden, hidden, 2, 2, 0, bias=True)
        self.cv2 = Conv(hidden, hidden, 3)
        self.cv3 = Conv(hidden, num_masks, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(self.cv2(self.upsample(self.cv1(x))))


class DFL(nn.Module):
    """Distribution focal integral: box logits (B, 4 * bins, A) -> expected distances (B, 4, A).

    Channel layout of the input is side * bins + bin (sides left, top, right, bottom). The
    softmax expectation over the bins is written as a fixed 1x1 convolution with weights
    0..bins-1 (a parameter in the checkpoint format, never trained).
    """

    def __init__(self, bins: int = 16) -> None:
        super().__init__()
        self.bins = bins
        self.conv = nn.Conv2d(bins, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(bins, dtype=torch.float32).view(1, bins, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, anchors = x.shape
        probs = x.view(batch, 4, self.bins, anchors).transpose(2, 1).softmax(1)  # (B, bins, 4, A)
        return self.conv(probs).view(batch, 4, anchors)
