"""A small U-Net score model s(x_t, t, z) with FiLM conditioning (TMLR paper, sec. 2 and app. D).

Each residual block modulates its second GroupNorm with a scale and shift computed from one
conditioning vector: norm(h) * (1 + scale) + shift (FiLM, as in improved-diffusion). That vector is
the time embedding (Gaussian Fourier features of log sigma(t), then an MLP) plus, for DRL, an MLP
embedding of the code z. Adding the two is how the paper joins them ("given as input to the model
in the same way as the time embedding"). With latent_dim = 0 the net is a plain score model.

The input is scaled by c_in = 1 / sqrt(sigma_data^2 + std^2) (EDM) so every layer sees unit-scale
activations from sigma = 0.01 to 50. The network F's output becomes a score in one of two ways
(`precond`), both exact for the VE SDE, so the sampler and every stage read either through the score:
- "paper": score = F / std, i.e. F predicts -noise (the papers' and score_sde's parametrisation).
  An error of F is an x_0 error of std * F: at high noise the x_0 estimate is poor.
- "edm": the denoiser D = c_skip x + c_out F with c_skip = sigma_data^2 / (std^2 + sigma_data^2),
  c_out = std sigma_data / sqrt(std^2 + sigma_data^2) (Karras et al. 2022), score = (D - x) / std^2.
  F's target has unit variance at every std, and at high noise D is F read as an image.
With code_map, the code is also projected to a coarse ch-channel image, upsampled and added after
the stem: FiLM alone gives every pixel the same modulation. The map is read from z itself
(code_map_from="z", every direction of z can matter) or from its embedding ("emb"), which is emb_dim
wide (default 4*ch); with code_map_every_res, every lower resolution of the down path gets a map of
its own width too (per-resolution projections of z). With latent_norm, z is
layer-normalised (no affine) before its embedding: the score net sees every code at one scale,
whatever the encoder's output scale. Both are measured levers beyond the papers (README).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from sde import VESDE


def group_norm(ch):
    groups = min(32, max(1, ch // 4))
    while ch % groups:
        groups -= 1
    return nn.GroupNorm(groups, ch)


def zero_init(module):
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)
    return module


class TimeEmbedding(nn.Module):
    """t -> Gaussian Fourier features of log sigma(t) (fixed random frequencies) -> MLP."""

    def __init__(self, dim, sde, fourier_scale=16.0):
        super().__init__()
        self.sde = sde
        self.register_buffer("freqs", torch.randn(dim // 2) * fourier_scale)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        log_sigma = torch.log(self.sde.sigma(t.float()))
        angles = 2 * math.pi * log_sigma[:, None] * self.freqs[None]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, then FiLM on the second GroupNorm from `cond`, SiLU-dropout-conv, plus skip.
    With cond_dim = 0 the block is unconditional (used by the plain encoder)."""

    def __init__(self, in_ch, out_ch, cond_dim, dropout=0.0):
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * out_ch) if cond_dim else None
        self.norm2, self.dropout = group_norm(out_ch), nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, cond=None):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.film is not None:
            scale, shift = self.film(F.silu(cond))[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual, output zero-initialised."""

    def __init__(self, ch, head_dim=32):
        super().__init__()
        self.heads = max(1, ch // head_dim)
        self.norm, self.qkv = group_norm(ch), nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero_init(nn.Conv2d(ch, ch, 1))

    def forward(self, x, cond=None):
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three n d) h w -> three b n (h w) d",
                            three=3, n=self.heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(rearrange(out, "b n (h w) d -> b (n d) h w", h=h, w=w))


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x, cond=None):
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour resize to the matching skip's size (so 7 -> 14 and 4 -> 7 both work), then conv."""

    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, size):
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


def fold(x, patch):
    """Space-to-depth: (B, C, H, W) -> (B, C * patch^2, H / patch, W / patch); unfold inverts it."""
    return F.pixel_unshuffle(x, patch) if patch > 1 else x


def unfold(x, patch):
    return F.pixel_shuffle(x, patch) if patch > 1 else x


def down_path(in_ch, ch, ch_mult, num_res_blocks, attn_res, image_size, cond_dim, dropout):
    """The downsampling half, shared by the U-Net and the encoder. Returns (blocks, skip channels, out ch)."""
    blocks, skips, cur, res = nn.ModuleList([nn.Conv2d(in_ch, ch, 3, padding=1)]), [ch], ch, image_size
    for level, mult in enumerate(ch_mult):
        for _ in range(num_res_blocks):
            blocks.append(ResBlock(cur, ch * mult, cond_dim, dropout))
            cur = ch * mult
            if res in attn_res:
                blocks.append(Attention(cur))
            skips.append(cur)
        if level < len(ch_mult) - 1:
            blocks.append(Downsample(cur))
            res = (res + 1) // 2
            skips.append(cur)
    return blocks, skips, cur


class UNet(nn.Module):
    def __init__(self, in_ch=1, image_size=28, ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_res=(),
                 dropout=0.0, latent_dim=0, sigma_min=0.01, sigma_max=50.0, sigma_data=0.5,
                 fourier_scale=16.0, precond="paper", latent_norm=False, code_map=False, code_map_from="emb",
                 mid_attn=True, emb_dim=None, code_map_every_res=False, patch=None):
        super().__init__()
        if precond not in ("paper", "edm"):
            raise ValueError(f"unknown precond {precond!r}: use paper or edm")
        self.sde, self.sigma_data, self.latent_dim = VESDE(sigma_min, sigma_max), sigma_data, latent_dim
        self.precond, self.patch = precond, patch or 1
        # patch > 1: the net works on patch x patch pixel blocks folded into channels (space-to-depth,
        # 28x28x1 -> 14x14x4 at 2), a quarter of the positions per layer (beyond the papers)
        in_ch, image_size = in_ch * self.patch ** 2, image_size // self.patch
        self.latent_norm = nn.LayerNorm(latent_dim, elementwise_affine=False) if latent_dim and latent_norm else None
        emb = emb_dim or 4 * ch  # the conditioning vector's width: how many directions of t and z FiLM can read
        self.time_embed = TimeEmbedding(emb, self.sde, fourier_scale)
        self.latent_embed = (nn.Sequential(nn.Linear(latent_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
                             if latent_dim else None)
        # the code as a coarse image too: FiLM alone modulates channels, the same at every pixel, so
        # from noise alone the net could not lay out where things are (beyond the papers)
        self.map_size = (image_size + 3) // 4
        if code_map_from not in ("emb", "z"):
            raise ValueError(f"unknown code_map_from {code_map_from!r}: use emb or z")
        self.code_map_from = code_map_from
        map_in = latent_dim if code_map_from == "z" else emb
        self.code_map = nn.Linear(map_in, ch * self.map_size ** 2) if latent_dim and code_map else None
        self.down, skips, cur = down_path(in_ch, ch, ch_mult, num_res_blocks, attn_res, image_size,
                                          emb, dropout)
        # with code_map_every_res, each lower resolution gets its own map too, added after its downsampling
        self.res_maps = nn.ModuleList([nn.Linear(map_in, ch * mult * self.map_size ** 2) for mult in ch_mult[:-1]]
                                      if self.code_map is not None and code_map_every_res else [])
        self.mid = nn.ModuleList([ResBlock(cur, cur, emb, dropout), *([Attention(cur)] if mid_attn else []),
                                  ResBlock(cur, cur, emb, dropout)])
        self.up, res = nn.ModuleList(), [image_size]
        for _ in ch_mult[1:]:
            res.append((res[-1] + 1) // 2)
        for level, mult in reversed(list(enumerate(ch_mult))):
            for i in range(num_res_blocks + 1):
                self.up.append(ResBlock(cur + skips.pop(), ch * mult, emb, dropout))
                cur = ch * mult
                if res[level] in attn_res:
                    self.up.append(Attention(cur))
            if level > 0:
                self.up.append(Upsample(cur))
        self.out = nn.Sequential(group_norm(cur), nn.SiLU(), zero_init(nn.Conv2d(cur, in_ch, 3, padding=1)))

    def forward(self, x, t, z=None):
        """Score s(x_t, t, z) for a batch x (B, C, H, W), times t (B,), codes z (B, latent_dim) or None."""
        cond, code_image = self.time_embed(t), None
        res_maps = iter(())  # the per-resolution code maps, taken in order after each downsampling
        size = (x.shape[-2] // self.patch, x.shape[-1] // self.patch)  # the grid the layers work on
        if self.latent_embed is not None:
            if z is None:
                raise ValueError("this score net was built with latent_dim > 0: pass the code z")
            z = z if self.latent_norm is None else self.latent_norm(z)
            z_emb = self.latent_embed(z)
            cond = cond + z_emb
            if self.code_map is not None:
                source = z if self.code_map_from == "z" else F.silu(z_emb)
                code_image = self.map_image(self.code_map, source, size)
                res_maps = iter(self.res_maps)
        std = self.sde.marginal_std(t.float())[:, None, None, None]
        var = self.sigma_data ** 2 + std ** 2
        h = fold(x * torch.rsqrt(var), self.patch)  # c_in
        hs = []
        for block in self.down:
            if isinstance(block, nn.Conv2d):  # the stem
                h = block(h) if code_image is None else block(h) + code_image
            else:
                h = block(h, cond)
            if isinstance(block, Downsample) and (layer := next(res_maps, None)) is not None:
                h = h + self.map_image(layer, source, h.shape[-2:])
            if isinstance(block, Attention):
                hs[-1] = h  # the skip of a stage is taken after its attention
            else:
                hs.append(h)
        for block in self.mid:
            h = block(h, cond)
        for block in self.up:
            if isinstance(block, ResBlock):
                h = block(torch.cat([h, hs.pop()], dim=1), cond)
            elif isinstance(block, Upsample):
                h = block(h, hs[-1].shape[-2:])
            else:
                h = block(h, cond)
        f = unfold(self.out(h), self.patch)
        return precondition(f.float(), x.float(), std, self.precond, self.sigma_data)

    def map_image(self, layer, source, size):
        """A code map: the linear projection of the code to a map_size^2 image, resized to `size`."""
        m = layer(source).view(len(source), -1, self.map_size, self.map_size)
        return F.interpolate(m, size=size, mode="bilinear", align_corners=False)


def precondition(f, x, std, precond="paper", sigma_data=0.5):
    """The score given the network output F at noise std (module docstring): F / std ("paper"), or
    (D - x) / std^2 with EDM's D = c_skip x + c_out F ("edm"), written so no large terms cancel."""
    if precond == "paper":
        return f / std
    var = sigma_data ** 2 + std ** 2
    return sigma_data * f * torch.rsqrt(var) / std - x / var


def network_target(score, x, std, precond="paper", sigma_data=0.5):
    """The inverse of `precondition`: the output F that gives `score`. For EDM, F's target for a
    clean x_0 has unit variance at every std (Karras et al. 2022, eq. 8)."""
    if precond == "paper":
        return score * std
    var = sigma_data ** 2 + std ** 2
    return (score + x / var) * std * torch.sqrt(var) / sigma_data
