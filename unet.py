"""A small U-Net F(x, c_noise, z) with FiLM conditioning (TMLR paper, sec. 2 and app. D), and the
preconditioning that makes it a score model s(x_t, t, z) of a VE SDE (`ScoreNet`, as EDM's wrapper).

Each residual block modulates its second GroupNorm with a scale and shift computed from one
conditioning vector: norm(h) * (1 + scale) + shift (FiLM, as in improved-diffusion). That vector is
the noise embedding (Gaussian Fourier features of c_noise = log sigma, then an MLP) plus, for DRL, an
MLP embedding of the code z. Adding the two is how the paper joins them ("given as input to the model
in the same way as the time embedding"). With latent_dim = 0 the net is a plain score model.

With code_map, the code z is also projected to a coarse ch-channel image, upsampled and added after
the stem: FiLM alone gives every pixel the same modulation. With latent_norm, z is layer-normalised
(no affine) before its embedding: the score net sees every code at one scale, whatever the encoder's
output scale. Both are levers beyond the papers, measured in RESULTS.md.

`ScoreNet` reads F as a score ("paper": F predicts -noise; "edm": EDM's denoiser), so the sampler and
every stage see one interface. This file imports torch and einops alone: copy it, build
`ScoreNet(UNet(...), VESDE())`, call `score_net(x_t, t, z)`.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


def group_norm(ch):
    groups = min(32, max(1, ch // 4))
    while ch % groups:
        groups -= 1
    return nn.GroupNorm(groups, ch)


def zero_init(module):
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)
    return module


class NoiseEmbedding(nn.Module):
    """c_noise (B,), e.g. log sigma -> Gaussian Fourier features (fixed random frequencies) -> MLP."""

    def __init__(self, dim, fourier_scale=16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(dim // 2) * fourier_scale)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise):
        angles = 2 * math.pi * c_noise.float()[:, None] * self.freqs[None]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, then FiLM on the second GroupNorm from `cond`, SiLU-conv, plus skip.
    With cond_dim = 0 the block is unconditional (used by the plain encoder)."""

    def __init__(self, in_ch, out_ch, cond_dim):
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * out_ch) if cond_dim else None
        self.norm2 = group_norm(out_ch)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, cond=None):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.film is not None:
            scale, shift = self.film(F.silu(cond))[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(F.silu(h))
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


class Stage(nn.ModuleList):
    """Blocks applied in turn, each given the conditioning vector: a ResBlock and its attention."""

    def forward(self, h, cond=None):
        for block in self:
            h = block(h, cond)
        return h


def down_path(in_ch, ch, ch_mult, num_res_blocks, attn_res, image_size, cond_dim):
    """The downsampling half, shared by the U-Net and the encoder: the stem conv, then stages whose
    every output is a skip for the U-Net's up path. Returns (stem, stages, skip channels, out ch)."""
    stem, stages, skips, cur, res = nn.Conv2d(in_ch, ch, 3, padding=1), nn.ModuleList(), [ch], ch, image_size
    for level, mult in enumerate(ch_mult):
        for _ in range(num_res_blocks):
            attention = [Attention(ch * mult)] if res in attn_res else []
            stages.append(Stage([ResBlock(cur, ch * mult, cond_dim), *attention]))
            cur = ch * mult
            skips.append(cur)
        if level < len(ch_mult) - 1:
            stages.append(Stage([Downsample(cur)]))
            res = (res + 1) // 2
            skips.append(cur)
    return stem, stages, skips, cur


class UNet(nn.Module):
    """F(x, c_noise, z): the network alone; `ScoreNet` turns it into a score."""

    def __init__(self, in_ch=1, image_size=28, ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_res=(),
                 latent_dim=0, latent_norm=False, code_map=False, mid_attn=True, fourier_scale=16.0):
        super().__init__()
        self.latent_norm = nn.LayerNorm(latent_dim, elementwise_affine=False) if latent_dim and latent_norm else None
        emb = 4 * ch  # the conditioning vector that every FiLM layer reads
        self.noise_embed = NoiseEmbedding(emb, fourier_scale)
        self.latent_embed = (nn.Sequential(nn.Linear(latent_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
                             if latent_dim else None)
        # the code as a coarse image too: FiLM alone modulates channels, the same at every pixel, so
        # from noise alone the net could not lay out where things are (beyond the papers)
        self.map_size = (image_size + 3) // 4
        self.code_map = nn.Linear(latent_dim, ch * self.map_size ** 2) if latent_dim and code_map else None
        self.stem, self.down, skips, cur = down_path(in_ch, ch, ch_mult, num_res_blocks, attn_res, image_size, emb)
        self.mid = Stage([ResBlock(cur, cur, emb), *([Attention(cur)] if mid_attn else []), ResBlock(cur, cur, emb)])
        self.up, self.upsample, res = nn.ModuleList(), nn.ModuleList(), [image_size]
        for _ in ch_mult[1:]:
            res.append((res[-1] + 1) // 2)
        for level, mult in reversed(list(enumerate(ch_mult))):
            stages = nn.ModuleList()
            for _ in range(num_res_blocks + 1):  # each reads one skip
                stages.append(Stage([ResBlock(cur + skips.pop(), ch * mult, emb),
                                     *([Attention(ch * mult)] if res[level] in attn_res else [])]))
                cur = ch * mult
            self.up.append(stages)
            if level > 0:
                self.upsample.append(Upsample(cur))
        self.out = nn.Sequential(group_norm(cur), nn.SiLU(), zero_init(nn.Conv2d(cur, in_ch, 3, padding=1)))

    def forward(self, x, c_noise, z=None):
        """F for a batch x (B, C, H, W), noise inputs c_noise (B,), codes z (B, latent_dim) or None."""
        cond = self.noise_embed(c_noise)
        h = self.stem(x)
        if self.latent_embed is not None:
            if z is None:
                raise ValueError("this net was built with latent_dim > 0: pass the code z")
            z = z if self.latent_norm is None else self.latent_norm(z)
            cond = cond + self.latent_embed(z)
            if self.code_map is not None:  # the code's map, resized to the stem's grid
                m = self.code_map(z).view(len(z), -1, self.map_size, self.map_size)
                h = h + F.interpolate(m, size=h.shape[-2:], mode="bilinear", align_corners=False)
        hs = [h]
        for stage in self.down:
            h = stage(h, cond)
            hs.append(h)
        h = self.mid(h, cond)
        for level, stages in enumerate(self.up):
            for stage in stages:
                h = stage(torch.cat([h, hs.pop()], dim=1), cond)
            if level < len(self.upsample):
                h = self.upsample[level](h, hs[-1].shape[-2:])
        return self.out(h)


class ScoreNet(nn.Module):
    """Preconditioning (EDM's wrapper) of a network F(x, c_noise, z) into the score s(x_t, t, z) of a VE
    SDE. `sde` is any object with sigma(t) and marginal_std(t) = std (sde.VESDE); the network reads
    c_in x_t with c_in = 1 / sqrt(sigma_data^2 + std^2) (unit-scale activations from sigma 0.01 to 50)
    and c_noise = log sigma(t). F becomes a score in one of two ways, both exact for the VE SDE:
    - "paper": score = F / std, i.e. F predicts -noise (the papers' and score_sde's parametrisation).
      An error of F is an x_0 error of std * F: at high noise the x_0 estimate is poor.
    - "edm": the denoiser D = c_skip x + c_out F with c_skip = sigma_data^2 / (std^2 + sigma_data^2),
      c_out = std sigma_data / sqrt(std^2 + sigma_data^2) (Karras et al. 2022), score = (D - x) / std^2.
      F's target has unit variance at every std, and at high noise D is F read as an image."""

    def __init__(self, net, sde, sigma_data=0.5, precond="paper"):
        super().__init__()
        if precond not in ("paper", "edm"):
            raise ValueError(f"unknown precond {precond!r}: use paper or edm")
        self.net, self.sde, self.sigma_data, self.precond = net, sde, sigma_data, precond

    def forward(self, x, t, z=None):
        t = t.float()
        std = self.sde.marginal_std(t)[:, None, None, None]
        c_in = torch.rsqrt(self.sigma_data ** 2 + std ** 2)
        f = self.net(x * c_in, torch.log(self.sde.sigma(t)), z)
        return precondition(f.float(), x.float(), std, self.precond, self.sigma_data)


def precondition(f, x, std, precond="paper", sigma_data=0.5):
    """The score given the network output F at noise std (ScoreNet): F / std ("paper"), or
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
