"""The variance-exploding SDE, the DRL loss and the denoising-score-matching floor.

TMLR paper, sec. 1.1-2: dx = sqrt(d[sigma^2(t)]/dt) dw with sigma(t) = sigma_min (sigma_max/sigma_min)^t.

Convention (kept everywhere in this codebase): the perturbation kernel is the paper's,
p_0t(x_t | x_0) = N(x_0, (sigma(t)^2 - sigma(0)^2) I), so x_t = x_0 exactly at t = 0. (score_sde
uses sigma(t) itself as the std, which neglects sigma(0).) `marginal_std(t)` is that kernel's std,
and the loss weight is its variance, lambda(t) = sigma(t)^2 - sigma(0)^2: the paper's sigma(t)^2 to
within sigma_min^2 = 1e-4, and it makes the weighted target exactly unit noise at every t.

Everything here is float32 maths on plain tensors; nothing depends on the networks.
"""
import math

import torch


class VESDE:
    def __init__(self, sigma_min=0.01, sigma_max=50.0):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t):
        return self.sigma_min * torch.exp(t * self.log_ratio)

    def g(self, t):
        """Diffusion coefficient g(t) = sqrt(d sigma^2 / dt) = sigma(t) sqrt(2 log(sigma_max/sigma_min)), eq. 1."""
        return self.sigma(t) * math.sqrt(2 * self.log_ratio)

    def marginal_std(self, t):
        """Std of p_0t(x_t | x_0): sqrt(sigma(t)^2 - sigma(0)^2)."""
        return torch.sqrt(self.sigma(t) ** 2 - self.sigma_min ** 2)

    def t_of_std(self, std):
        """The inverse of marginal_std: the time at which the kernel's std is `std`."""
        return torch.log(torch.sqrt(std ** 2 + self.sigma_min ** 2) / self.sigma_min) / self.log_ratio

    def perturb(self, x0, t, noise):
        """x_t = x_0 + marginal_std(t) * noise, a sample of p_0t(x_t | x_0)."""
        return x0 + _bc(self.marginal_std(t), x0) * noise

    def kernel_score(self, x_t, x0, t):
        """grad_{x_t} log p_0t(x_t | x_0) = -(x_t - x_0) / std^2, the regression target of DSM.
        `dsm_loss` uses its closed form -noise / std, which needs no division by a tiny std."""
        return -(x_t - x0) / _bc(self.marginal_std(t), x0) ** 2

    def prior_sampling(self, shape, t=1.0, device=None, generator=None):
        """x_T ~ N(0, marginal_std(t)^2 I); the data mean is neglected next to sigma_max."""
        return torch.randn(shape, device=device, generator=generator) * self.marginal_std(torch.tensor(float(t))).item()

    def reverse_drift(self, x, t, score):
        """Drift of the reverse-time SDE, eq. 2: f - g^2 score, with f = 0 for the VE SDE."""
        return -_bc(self.g(t), x) ** 2 * score

    def sample_t(self, n, mode="uniform", t_fixed=0.5, eps=1e-5, p_mean=-1.2, p_std=1.2, device=None,
                 uniform_share=0.0, stratified=False, return_share=False):
        """Training times; the mode sets what the code encodes (granularity control, TMLR sec. 3.3).

        uniform: t ~ U(eps, 1), i.e. log sigma uniform: every scale alike (the papers' default).
        sigma: sigma(t) ~ U(sigma_min, sigma_max), which puts most weight on high noise (class-level
        codes).  fixed: every t = t_fixed (single timescale).  lognormal: the noise std (EDM's sigma) with
        ln std ~ N(p_mean, p_std^2), clipped to [sigma_min, marginal_std(1)] in std itself, so a draw
        below sigma_min trains at std = sigma_min (t = 0.04), never at a smaller std; p_mean picks the
        scale the code favours.
        uniform_share: that share of the draws is uniform in t instead (a mixture), so that a
        high-noise mode still trains the low noise levels where a sample's texture is made; with
        return_share, also which draws came from that share (a bool mask).
        stratified: the n underlying uniforms are (u + i) / n for one random u, one in each of n equal
        strata, so a batch covers the noise levels evenly (the low-discrepancy sampler of Kingma et al.
        2021, VDM): the same distribution per draw, a lower-variance loss per batch.
        """
        if uniform_share or return_share:
            t = self.sample_t(n, mode, t_fixed, eps, p_mean, p_std, device, stratified=stratified)
            share = torch.zeros(n, dtype=torch.bool, device=device)
            if uniform_share:
                share = torch.rand(n, device=device) < uniform_share
                t = torch.where(share, self.sample_t(n, "uniform", eps=eps, device=device), t)
            return (t, share) if return_share else t
        u = ((torch.rand(1, device=device) + torch.arange(n, device=device) / n) % 1 if stratified
             else torch.rand(n, device=device))
        if mode == "uniform":
            return eps + (1 - eps) * u
        if mode == "sigma":
            s = self.sigma_min + (self.sigma_max - self.sigma_min) * u
            return (torch.log(s / self.sigma_min) / self.log_ratio).clamp(min=eps)
        if mode == "fixed":
            return torch.full((n,), float(t_fixed), device=device)
        if mode == "lognormal":
            std = torch.exp(p_mean + p_std * torch.special.ndtri(u.clamp(1e-7, 1 - 1e-7)))
            std = std.clamp(self.sigma_min, self.marginal_std(torch.tensor(1.0)).item())
            return self.t_of_std(std).clamp(max=1.0)
        raise ValueError(f"unknown t-sampling mode {mode!r}: use uniform, sigma, fixed or lognormal")


def _bc(v, x):
    """Broadcast a per-sample vector v (B,) against a batch x (B, ...)."""
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def dsm_loss(score, noise, std, weighting="paper", sigma_data=0.5):
    """Per-sample DRL/DSM loss, eq. 7 (TMLR): lambda(t) || s - grad log p_0t(x_t|x_0) ||^2, summed
    over pixels. With grad log p_0t = -noise / std:
    - weighting "paper": lambda = std^2, so the loss is ||std * s + noise||^2. In units of the implied
      denoised image D = x_t + std^2 s it is ||D - x_0||^2 / std^2: an x_0 error at std = 30 counts
      1/900, so high noise, where the code must say what the image is, barely trains the encoder.
    - weighting "edm" (Karras et al. 2022): lambda = std^2 (std^2 + sigma_data^2) / sigma_data^2, i.e.
      (std^2 + sigma_data^2) / (std sigma_data)^2 ||D - x_0||^2: the paper's at small std, a constant
      1 / sigma_data^2 per x_0 error at high std."""
    per = (_bc(std, score) * score.float() + noise).square().flatten(1).sum(1)
    if weighting == "edm":
        per = per * (1 + std.square() / sigma_data ** 2)
    return per


def kl_to_standard_normal(mu, logvar):
    """KL( N(mu, exp(logvar)) || N(0, I) ) per sample, eq. 8 (TMLR)."""
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).flatten(1).sum(1)


# ---- The DSM floor, eq. 6: for a finite data set the marginal p_t is a Gaussian mixture. ----

def mixture_score(x_t, data, std):
    """Exact grad log p_t(x_t) for p_t = mean_i N(data_i, std^2 I): sum_i w_i (data_i - x_t) / std^2,
    with w = softmax_i(-||x_t - data_i||^2 / (2 std^2)). x_t (B, ...), data (N, ...), std (B,)."""
    xf, df = x_t.flatten(1).double(), data.flatten(1).double()
    var = std.double()[:, None] ** 2
    w = torch.softmax(-torch.cdist(xf, df).square() / (2 * var), dim=1)
    return ((w @ df - xf) / var).reshape(x_t.shape).to(x_t.dtype)


def dsm_floor(sde, data, t, n_mc=4096, generator=None):
    """Monte-Carlo estimate of the constant in eq. 6,
    E_{x_0, x_t} lambda(t) || grad log p_0t(x_t|x_0) - grad log p_t(x_t) ||^2,
    the lowest DSM loss any score model s(x_t, t) can reach at time t. Returns (mean, std. error)."""
    idx = torch.randint(len(data), (n_mc,), generator=generator)
    x0 = data[idx]
    t = torch.full((n_mc,), float(t))
    noise = torch.randn(x0.shape, generator=generator)
    std = sde.marginal_std(t)
    x_t = sde.perturb(x0, t, noise)
    per = dsm_loss(mixture_score(x_t, data, std), noise, std)
    return per.mean().item(), (per.std() / math.sqrt(n_mc)).item()
