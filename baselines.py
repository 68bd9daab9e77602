"""The baselines of the TMLR paper's Fig. 4: the DRL encoder trained by other objectives, with their
heads and losses. `Decoder` reconstructs x_0 from z (AE; VAE with a probabilistic encoder and the
ELBO's KL), `Projector` and `nt_xent` are SimCLR's head and loss, here with Gaussian pixel noise as
the only augmentation (SimCLR-Gauss). Each loss is built from its parameters, like sde.DRLLoss, and
called with the encoder and its head; it returns (loss, regulariser), batch means.

    loss, reg = AutoencoderLoss(kl=1.0)(encoder, decoder, x0)
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from sde import kl_to_standard_normal
from unet import group_norm


class Decoder(nn.Module):
    """x_0 from z alone (AE, VAE): dense layers to the encoder's smallest feature map, then per level
    a nearest-neighbour upsampling and two GroupNorm-SiLU-conv layers; returns pixel logits."""

    def __init__(self, in_ch=1, image_size=28, ch=32, ch_mult=(1, 2, 2), latent_dim=128, hidden=256):
        super().__init__()
        self.sizes = [image_size]
        for _ in ch_mult[1:]:
            self.sizes.append((self.sizes[-1] + 1) // 2)  # the encoder's resolutions, e.g. 28, 14
        chans = [ch * m for m in ch_mult]
        self.start = (chans[-1], self.sizes[-1])
        self.dense = nn.Sequential(nn.Linear(latent_dim, hidden), nn.SiLU(),
                                   nn.Linear(hidden, chans[-1] * self.sizes[-1] ** 2))
        self.levels = nn.ModuleList()
        for c_in, c_out in zip(chans[::-1], chans[::-1][1:] + [chans[0]]):
            self.levels.append(nn.Sequential(
                group_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
                group_norm(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1)))
        self.out = nn.Sequential(group_norm(chans[0]), nn.SiLU(), nn.Conv2d(chans[0], in_ch, 3, padding=1))

    def forward(self, z):
        c, s = self.start
        h = self.dense(z).view(-1, c, s, s)
        for level, size in zip(self.levels, self.sizes[::-1][1:] + [self.sizes[0]]):
            h = level(h)
            if h.shape[-1] != size:
                h = F.interpolate(h, size=(size, size), mode="nearest")
        return self.out(h)


class Projector(nn.Module):
    """SimCLR's projection head g(z); the loss reads g(z), downstream tasks read z."""

    def __init__(self, latent_dim=128, hidden=256, out_dim=128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, z):
        return self.net(z)


def nt_xent(h1, h2, temperature=0.5):
    """SimCLR's NT-Xent loss for two views (B, D) of the same B images: each view's positive is the
    other view of its image, the 2B - 2 other views are negatives. Mean over the 2B anchors."""
    h = F.normalize(torch.cat([h1, h2]).float(), dim=1)
    sim = h @ h.T / temperature
    sim.fill_diagonal_(float("-inf"))  # an anchor is not its own negative
    b = h1.shape[0]
    positive = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(h.device)
    return F.cross_entropy(sim, positive)


class AutoencoderLoss:
    """ae, vae: x_0 from z alone; Bernoulli likelihood of the intensities in [0, 1], plus kl times the
    KL of a probabilistic code to N(0, I) (vae: the ELBO at kl = 1)."""

    def __init__(self, kl=1.0):
        self.kl = kl

    def __call__(self, encoder, decoder, x0):
        mu, logvar = encoder(x0)
        z = mu if logvar is None else mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = decoder(z).float()
        loss = F.binary_cross_entropy_with_logits(logits, x0, reduction="none").flatten(1).sum(1).mean()
        reg = self.kl * kl_to_standard_normal(mu, logvar).mean() if logvar is not None else torch.zeros_like(loss)
        return loss, reg


class SimCLRGaussLoss:
    """SimCLR's NT-Xent on two views of each image that differ only by Gaussian pixel noise of std aug_std."""

    def __init__(self, aug_std=0.3, temperature=0.5):
        self.aug_std, self.temperature = aug_std, temperature

    def __call__(self, encoder, projector, x0):
        views = x0.repeat(2, 1, 1, 1)
        views = views + self.aug_std * torch.randn_like(views)
        h = projector(encoder(views)[0])
        return nt_xent(*h.chunk(2), self.temperature), torch.zeros((), device=x0.device)
