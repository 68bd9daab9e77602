"""The samplers of the reverse VE SDE, copyable on their own: each needs only a `score_fn(x, t)` and
an SDE object with four methods, `marginal_std(t)`, `g(t)`, `t_of_std(std)` and
`prior_sampling(shape, t, device)` (sde.VESDE, or any schedule with these methods), plus
`reverse_drift(x, t, score)` for Euler-Maruyama. Nothing else from this project is imported.

- pc_sample: the predictor-corrector sampler of score_sde (Song et al. 2021): a predictor step of the
  reverse SDE (eq. 2, TMLR) after Langevin corrector steps; predictors reverse_diffusion (the
  default), euler_maruyama and probability_flow.
- heun_sample: EDM's second-order sampler (Karras et al. 2022, Algorithm 2) with optional churn.
"""
import torch


def per_sample(v, x):
    """A per-sample vector v (B,) shaped to broadcast against a batch x (B, ...)."""
    return v.reshape(-1, *([1] * (x.dim() - 1)))


# ---- predictors: one step from t to t_next < t; each returns (x, x_mean) ----

def reverse_diffusion(sde, score_fn, x, t, t_next):
    """Ancestral step of the discretised reverse SDE: the variance between t_next and t is removed."""
    var = per_sample(sde.marginal_std(t) ** 2 - sde.marginal_std(t_next) ** 2, x)
    x_mean = x + var * score_fn(x, t)
    return x_mean + var.sqrt() * torch.randn_like(x), x_mean


def euler_maruyama(sde, score_fn, x, t, t_next):
    """Euler-Maruyama step of dx = [f - g^2 score] dt + g dw (eq. 2), backwards in time by dt = t - t_next."""
    dt = per_sample(t - t_next, x)
    x_mean = x - sde.reverse_drift(x, t, score_fn(x, t)) * dt
    return x_mean + per_sample(sde.g(t), x) * dt.sqrt() * torch.randn_like(x), x_mean


def probability_flow(sde, score_fn, x, t, t_next):
    """Deterministic step of the probability-flow ODE, dx = -g^2 score / 2 dt = -std score d(std).
    Euler in std (EDM's / DDIM's step) rather than in t: exact wherever std >> the data's scale."""
    std, std_next = per_sample(sde.marginal_std(t), x), per_sample(sde.marginal_std(t_next), x)
    x_mean = x + std * (std - std_next) * score_fn(x, t)
    return x_mean, x_mean


PREDICTORS = {"reverse_diffusion": reverse_diffusion, "euler_maruyama": euler_maruyama,
              "probability_flow": probability_flow}


def langevin(score_fn, x, t, snr, n_steps):
    """Langevin corrector at fixed t; step 2 (snr ||noise|| / ||score||)^2 with norms averaged over
    the batch (score_sde's rule). Returns (x, x_mean)."""
    x_mean = x
    for _ in range(n_steps):
        grad, noise = score_fn(x, t), torch.randn_like(x)
        ratio = noise.flatten(1).norm(dim=1).mean() / grad.flatten(1).norm(dim=1).mean()
        step = 2 * (snr * ratio) ** 2
        x_mean = x + step * grad
        x = x_mean + torch.sqrt(2 * step) * noise
    return x, x_mean


@torch.no_grad()
def pc_sample(sde, score_fn, shape, steps=1000, predictor="reverse_diffusion", corrector_steps=1, snr=0.16,
              t_init=1.0, eps=1e-5, denoise=True, x_init=None, device=None):
    """Integrate the reverse SDE from t_init to eps with `steps` predictor steps, each after
    `corrector_steps` Langevin steps. Starts from the prior N(0, std(t_init)^2 I) unless x_init is
    given (e.g. a perturbed image). The last step goes to t = 0; with denoise it returns the
    noise-free mean. Returns (samples, number of score evaluations)."""
    x = sde.prior_sampling(shape, t_init, device=device) if x_init is None else x_init
    ts = torch.cat([torch.linspace(t_init, eps, steps, device=x.device), torch.zeros(1, device=x.device)])
    step_fn = PREDICTORS[predictor]
    for i in range(steps):
        t, t_next = ts[i].expand(shape[0]), ts[i + 1].expand(shape[0])
        if corrector_steps:
            x, x_mean = langevin(score_fn, x, t, snr, corrector_steps)
        x, x_mean = step_fn(sde, score_fn, x, t, t_next)
    return (x_mean if denoise else x), steps * (1 + corrector_steps)


@torch.no_grad()
def heun_sample(sde, score_fn, shape, steps=18, rho=7.0, churn=0.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003,
                t_init=1.0, std_min=0.002, x_init=None, device=None):
    """EDM's sampler (Karras et al. 2022, Algorithm 2): Heun's 2nd-order method on the probability-flow
    ODE dx/d(std) = -std * score(x, std), over the noise levels std_i = (a + i/(N-1) (b - a))^rho,
    a = std(t_init)^(1/rho), b = std_min^(1/rho) (EDM's 0.002: below half a grey level of an 8-bit
    image), then an Euler step to std = 0. With churn > 0, each step whose std lies in [s_tmin, s_tmax]
    first raises std by a factor 1 + gamma, gamma = min(churn / N, sqrt(2) - 1), with fresh noise of
    s_noise times its nominal std (EDM's S_tmin, S_tmax, S_noise; defaults: their ImageNet values), never
    above std(t_init), so the net is never asked about a noise level beyond t = 1.
    Returns (samples, score evaluations = 2N - 1)."""
    hi, lo = sde.marginal_std(torch.tensor(float(t_init))), torch.tensor(float(std_min))
    ramp = torch.linspace(0, 1, steps)
    stds = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    stds = torch.cat([stds, torch.zeros(1)]).tolist()
    x = sde.prior_sampling(shape, t_init, device=device) if x_init is None else x_init
    gamma = min(churn / steps, 2 ** 0.5 - 1)
    dx_dstd = lambda x, std: -std * score_fn(x, sde.t_of_std(torch.full((shape[0],), std, device=x.device)))
    nfe = 0
    for std, std_next in zip(stds[:-1], stds[1:]):
        std_hat = min(std * (1 + gamma), hi.item()) if s_tmin <= std <= s_tmax else std
        if std_hat > std:  # churn: step back up the noise ladder with fresh noise
            x = x + (std_hat ** 2 - std ** 2) ** 0.5 * s_noise * torch.randn_like(x)
            std = std_hat
        d = dx_dstd(x, std)
        x_next = x + (std_next - std) * d
        nfe += 1
        if std_next > 0:  # Heun's correction; the last step to std = 0 is plain Euler
            x_next = x + (std_next - std) * 0.5 * (d + dx_dstd(x_next, std_next))
            nfe += 1
        x = x_next
    return x, nfe
