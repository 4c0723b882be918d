r"""A small U-Net for images of shape ``(B, C, H, W)``, from 8×8 to 32×32.

Residual blocks :math:`h \leftarrow h + \mathrm{Conv}(\mathrm{SiLU}(\mathrm{GN}(
\mathrm{Conv}(\mathrm{SiLU}(\mathrm{GN}(h))) + U\gamma(t))))` with GroupNorm and SiLU;
down-sampling by strided convolution, up-sampling by nearest-neighbour + convolution,
skip connections concatenated at each resolution, and optional single-head
self-attention in the middle block, at the lowest resolution. The output convolution starts
at zero, so an untrained network predicts 0.

References:
    Ronneberger et al., "U-Net", 2015; Ho et al., "Denoising Diffusion Probabilistic
    Models", 2020, Appendix B; Wu & He, "Group Normalization", 2018.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._validate import check_int, check_positive
from .embedding import NoiseEmbedding

__all__ = ["UNet"]


def _groups(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(e)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)  # (b, hw, c)
        return x + self.proj(a.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    r"""U-Net ``net(x, t)`` for images ``x`` of shape ``(B, channels, H, W)``.

    Arguments:
        channels: image channels (1 for grey, 3 for RGB).
        base: channels at full resolution.
        mults: channel multiplier per resolution level; level ``i`` runs at
            ``H / 2**i``, so ``H`` and ``W`` must be divisible by ``2**(len(mults)-1)``.
        blocks: residual blocks per level.
        attention: add single-head self-attention at the lowest resolution.
        emb_dim, embedding, emb_scale, time_input: the noise embedding (see
            :class:`~scorekit.nets.embedding.NoiseEmbedding`).
        num_classes: class-conditional on labels ``y`` in :math:`[0, K]`, :math:`K` the null
            label; ``None``: no labels.
        augment_dim: takes augmentation parameters ``aug`` of shape ``(B, augment_dim)``
            (non-leaky augmentation, :class:`~scorekit.losses.Augmented`); ``None``: none.

    Returns (forward ``net(x, t, y=None, aug=None)``):
        Tensor of shape ``(B, channels, H, W)``.

    Example:
        >>> net = UNet(1, base=16, mults=(1, 2))
        >>> net(torch.randn(2, 1, 8, 8), torch.rand(2)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        channels: int = 1,
        base: int = 32,
        mults: tuple[int, ...] | list[int] = (1, 2),
        blocks: int = 1,
        attention: bool = True,
        emb_dim: int = 128,
        embedding: str = "fourier",
        emb_scale: float = 16.0,
        time_input: str = "t",
        num_classes: int | None = None,
        augment_dim: int | None = None,
    ):
        super().__init__()
        check_int("channels", channels)
        check_int("base", base)
        check_int("blocks", blocks)
        mults = [check_int("mults[i]", m) for m in mults]
        if not mults:
            raise ValueError("mults must list at least one multiplier, got []")
        self._config = {
            "name": "unet",
            "channels": channels,
            "base": base,
            "mults": mults,
            "blocks": blocks,
            "attention": bool(attention),
            "emb_dim": emb_dim,
            "embedding": embedding,
            "emb_scale": emb_scale,
            "time_input": time_input,
        }
        if num_classes is not None:
            self._config["num_classes"] = check_int("num_classes", num_classes)
        if augment_dim is not None:
            self._config["augment_dim"] = check_int("augment_dim", augment_dim)
        self.channels, self.levels = channels, len(mults)
        check_int("emb_dim", emb_dim, minimum=2)
        check_positive("emb_scale", emb_scale)
        self.embed = NoiseEmbedding(
            emb_dim,
            embedding,
            emb_scale,
            time_input,
            num_classes=num_classes,
            augment_dim=augment_dim,
        )
        self.num_classes = self.embed.num_classes
        self.inp = nn.Conv2d(channels, base, 3, padding=1)
        chans = [base * m for m in mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, ch = [base], base
        for i, c in enumerate(chans):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(_ResBlock(ch, c, emb_dim))
                ch = c
                skips.append(ch)
            self.down.append(level)
            if i < len(chans) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid1 = _ResBlock(ch, ch, emb_dim)
        self.mid_attn = _Attention(ch) if attention else nn.Identity()
        self.mid2 = _ResBlock(ch, ch, emb_dim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, c in reversed(list(enumerate(chans))):
            level = nn.ModuleList()
            for _ in range(blocks + 1):
                level.append(_ResBlock(ch + skips.pop(), c, emb_dim))
                ch = c
            self.up.append(level)
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.out_norm = nn.GroupNorm(_groups(ch), ch)
        self.out = nn.Conv2d(ch, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def config(self) -> dict:
        """JSON-able config; ``scorekit.nets.build_net(config)`` rebuilds the network."""
        return {**self._config, "mults": list(self._config["mults"])}

    def _check(self, x: Tensor, t: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x must have shape (B, {self.channels}, H, W), got {tuple(x.shape)}")
        k = 2 ** (self.levels - 1)
        if x.shape[2] % k or x.shape[3] % k:
            raise ValueError(
                f"image side must be divisible by {k} for {self.levels} levels, "
                f"got {tuple(x.shape[2:])}"
            )
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")

    def forward(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, aug: Tensor | None = None
    ) -> Tensor:
        self._check(x, t)
        e = F.silu(self.embed(t, y, aug).to(x.dtype))
        h = self.inp(x)
        hs = [h]
        for i, level in enumerate(self.down):
            for block in level:
                h = block(h, e)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, e)), e)
        for j, level in enumerate(self.up):
            for block in level:
                h = block(torch.cat([h, hs.pop()], dim=1), e)
            if j < len(self.upsample):
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))
