"""The variance-exploding SDE, the DRL loss and the denoising-score-matching floor.

TMLR paper, sec. 1.1-2: dx = sqrt(d[sigma^2(t)]/dt) dw with sigma(t) = sigma_min (sigma_max/sigma_min)^t.

Convention (kept everywhere in this codebase): the perturbation kernel is the paper's,
p_0t(x_t | x_0) = N(x_0, (sigma(t)^2 - sigma(0)^2) I), so x_t = x_0 exactly at t = 0. (score_sde
uses sigma(t) itself as the std, which neglects sigma(0).) `marginal_std(t)` is that kernel's std,
and the loss weight is its variance, lambda(t) = sigma(t)^2 - sigma(0)^2: the paper's sigma(t)^2 to
within sigma_min^2 = 1e-4, and it makes the weighted target exactly unit noise at every t.

    sde = VESDE(sigma_min=0.01, sigma_max=50)
    loss = DRLLoss(sde, sample_t=partial(t_fixed, t=0.4), uniform_share=0.5, weighting="edm", sigma_data=0.29)
    loss_value, reg = loss(encoder, score_net, x0)     # score_net(x_t, t, z) -> score; encoder(x0, t) -> (mu, logvar)

Everything here is float32 maths on plain tensors and imports torch alone: no network, no flags.
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


def _bc(v, x):
    """Broadcast a per-sample vector v (B,) against a batch x (B, ...)."""
    return v.reshape(-1, *([1] * (x.dim() - 1)))


# ---- Training times: what the code encodes (granularity control, TMLR sec. 3.3). Each draws n times. ----

def t_uniform(n, sde=None, device=None, eps=1e-5):
    """t ~ U(eps, 1), i.e. log sigma uniform: every scale alike (the papers' default)."""
    return eps + (1 - eps) * torch.rand(n, device=device)


def t_sigma_uniform(n, sde, device=None, eps=1e-5):
    """sigma(t) ~ U(sigma_min, sigma_max): most draws at high noise, where the code says the class."""
    s = sde.sigma_min + (sde.sigma_max - sde.sigma_min) * torch.rand(n, device=device)
    return (torch.log(s / sde.sigma_min) / sde.log_ratio).clamp(min=eps)


def t_fixed(n, sde=None, device=None, t=0.5):
    """Every draw at one time: a single timescale."""
    return torch.full((n,), float(t), device=device)


def t_lognormal(n, sde, device=None, p_mean=-1.2, p_std=1.2):
    """The kernel's std with ln std ~ N(p_mean, p_std^2) (EDM), clipped to [sigma_min, marginal_std(1)]:
    a draw below sigma_min trains at std = sigma_min (t = 0.04). p_mean picks the scale the code favours."""
    u = torch.rand(n, device=device).clamp(1e-7, 1 - 1e-7)
    std = torch.exp(p_mean + p_std * torch.special.ndtri(u))
    std = std.clamp(sde.sigma_min, sde.marginal_std(torch.tensor(1.0)).item())
    return sde.t_of_std(std).clamp(max=1.0)


# ---- The loss ----

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


class DRLLoss:
    """DSM of a score net s(x_t, t, z) given the code z = E(x_0[, t]) of the clean image: eq. 7 (DRL),
    eq. 8 (VDRL: the encoder returns (mu, logvar) and z is sampled), eq. 9 (a time-conditioned encoder
    reads the loss's own t); with encoder None, the plain score model of eq. 4.

    sample_t(n, sde, device) -> t   the training times (t_uniform, t_sigma_uniform, t_fixed, t_lognormal)
    uniform_share                   this share of the draws is uniform in t instead (a mixture), so every
                                    noise level the sampler visits is trained, whatever sample_t favours
    share_trains_encoder            False: the uniform share's loss trains the score net only, and the
                                    code learns from sample_t's draws alone
    weighting, sigma_data           lambda(t) of `dsm_loss`: "paper" (std^2) or "edm"
    l1, kl                          weight of the code's L1 norm (deterministic code) or of its KL to
                                    N(0, I) (probabilistic code, eq. 8)
    Returns (loss, regulariser), batch means.
    """

    def __init__(self, sde, sample_t=t_uniform, uniform_share=0.0, share_trains_encoder=True,
                 weighting="paper", sigma_data=0.5, l1=0.0, kl=0.0):
        self.sde, self.sample_t, self.uniform_share = sde, sample_t, uniform_share
        self.share_trains_encoder, self.weighting, self.sigma_data = share_trains_encoder, weighting, sigma_data
        self.l1, self.kl = l1, kl

    def __call__(self, encoder, score_net, x0):
        n, device = len(x0), x0.device
        t = self.sample_t(n, self.sde, device)
        share = None
        if self.uniform_share:
            share = torch.rand(n, device=device) < self.uniform_share
            t = torch.where(share, t_uniform(n, self.sde, device), t)
        z = mu = logvar = None
        if encoder is not None:
            mu, logvar = encoder(x0, t)
            z = mu if logvar is None else mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # reparameterised
            if share is not None and not self.share_trains_encoder:
                z = torch.where(share[:, None], z.detach(), z)
        noise = torch.randn_like(x0)
        score = score_net(self.sde.perturb(x0, t, noise), t, z)
        loss = dsm_loss(score, noise, self.sde.marginal_std(t), self.weighting, self.sigma_data).mean()
        if logvar is not None:
            reg = self.kl * kl_to_standard_normal(mu, logvar).mean()
        elif z is not None:
            reg = self.l1 * z.float().abs().sum(1).mean()
        else:
            reg = torch.zeros((), device=device)
        return loss, reg


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
