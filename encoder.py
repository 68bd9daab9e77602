"""The DRL encoder E(x_0) or E(x_0, t): the representation (TMLR paper, sec. 2.1-2.2).

The trunk is the U-Net's downsampling half; a 4x4 average pool and three dense layers map it to a
latent_dim code (as in the paper's app. D). Three kinds:
- deterministic (DRL, eq. 7): z = E(x_0);
- probabilistic (VDRL, eq. 8): (mu, logvar), z = mu + exp(logvar / 2) * eps, KL to N(0, I);
- time-conditioned (eq. 9): every residual block is FiLM-modulated by the embedding of log sigma(t),
  so an image maps to a curve t -> E(x_0, t) (the "infinite-dimensional" code).
The encoder always reads the clean image x_0. Downstream use goes through `encode`, which returns
the mean for probabilistic encoders. The baselines' heads live in baselines.py.
"""
import torch
import torch.nn as nn

from sde import VESDE
from unet import NoiseEmbedding, down_path, group_norm


class Encoder(nn.Module):
    def __init__(self, in_ch=1, image_size=28, ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_res=(),
                 latent_dim=128, probabilistic=False, time_cond=False, hidden=256,
                 sigma_min=0.01, sigma_max=50.0, fourier_scale=16.0):
        super().__init__()
        self.latent_dim, self.probabilistic, self.time_cond = latent_dim, probabilistic, time_cond
        emb = 4 * ch if time_cond else 0
        self.sde = VESDE(sigma_min, sigma_max) if time_cond else None
        self.time_embed = NoiseEmbedding(emb, fourier_scale) if time_cond else None
        self.stem, self.trunk, _, cur = down_path(in_ch, ch, ch_mult, num_res_blocks, attn_res, image_size, emb)
        self.head = nn.Sequential(
            group_norm(cur), nn.SiLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(16 * cur, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 2 * latent_dim if probabilistic else latent_dim))

    def forward(self, x0, t=None):
        """Returns (mu, logvar); logvar is None for a deterministic encoder."""
        cond = None
        if self.time_cond:
            if t is None:
                raise ValueError("this encoder is time-conditioned: pass t, E(x0, t)")
            cond = self.time_embed(torch.log(self.sde.sigma(t.float())))
        h = self.stem(x0)
        for stage in self.trunk:
            h = stage(h, cond)
        out = self.head(h).float()
        if self.probabilistic:
            mu, logvar = out.chunk(2, dim=1)
            return mu, logvar.clamp(-30.0, 20.0)
        return out, None


@torch.no_grad()
def encode(encoder, x0, t=None):
    """Code of a batch of clean images x0 (B, C, H, W) in [0, 1] at time t (a float or a (B,) tensor;
    ignored by encoders without t). Returns the float32 mean code (B, latent_dim)."""
    if t is not None and not torch.is_tensor(t):
        t = torch.full((x0.shape[0],), float(t), device=x0.device)
    return encoder(x0, t)[0]
