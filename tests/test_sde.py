"""The VE SDE against closed forms, and the DSM floor of eq. 6 (the paper's central argument)."""
import math
from functools import partial

import pytest
import torch

from sde import (VESDE, DRLLoss, dsm_floor, dsm_loss, kl_to_standard_normal, mixture_score, t_fixed, t_lognormal,
                 t_sigma_uniform, t_uniform)

sde = VESDE(0.01, 50.0)


def test_sigma_endpoints_and_geometric_schedule():
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(sde.sigma(t), torch.tensor([0.01, math.sqrt(0.01 * 50), 50.0]), rtol=1e-5)
    assert sde.marginal_std(torch.tensor([0.0])).item() == 0.0  # paper's kernel: x_t = x_0 at t = 0


def test_g_squared_is_time_derivative_of_sigma_squared():
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    h = 1e-6
    deriv = (sde.sigma(t + h) ** 2 - sde.sigma(t - h) ** 2) / (2 * h)
    assert torch.allclose(sde.g(t) ** 2, deriv, rtol=1e-5)


def test_perturbation_kernel_moments():
    torch.manual_seed(0)
    x0 = torch.full((20000, 3), 2.0)
    t = torch.full((20000,), 0.3)
    x_t = sde.perturb(x0, t, torch.randn_like(x0))
    expected = math.sqrt(sde.sigma(torch.tensor(0.3)).item() ** 2 - 0.01 ** 2)
    assert abs(x_t.mean().item() - 2.0) < 4 * expected / math.sqrt(60000)
    assert abs(x_t.std().item() / expected - 1) < 0.02


def test_kernel_score_is_gradient_of_log_kernel():
    x0, t = torch.randn(5, 4, dtype=torch.float64), torch.rand(5, dtype=torch.float64) * 0.9 + 0.05
    x_t = (x0 + torch.randn_like(x0)).requires_grad_()
    std = sde.marginal_std(t)[:, None]
    log_p = torch.distributions.Normal(x0, std).log_prob(x_t).sum()
    (grad,) = torch.autograd.grad(log_p, x_t)
    assert torch.allclose(sde.kernel_score(x_t, x0, t), grad)


def test_time_sampling_modes():
    torch.manual_seed(0)
    u = t_uniform(100000, sde, eps=1e-5)
    assert u.min() >= 1e-5 and u.max() <= 1 and abs(u.mean().item() - 0.5) < 0.01
    s = sde.sigma(t_sigma_uniform(100000, sde))  # sigma uniform on [sigma_min, sigma_max]
    assert abs(s.mean().item() - 25.005) < 0.3 and abs(s.std().item() - 49.99 / math.sqrt(12)) < 0.3
    assert torch.all(t_fixed(10, sde, t=0.7) == 0.7)


def test_prior_and_reverse_drift():
    torch.manual_seed(0)
    x = sde.prior_sampling((4000, 8))
    assert abs(x.std().item() / 50.0 - 1) < 0.02
    assert abs(sde.prior_sampling((4000, 8), t=0.6).std().item() / 1.66 - 1) < 0.02  # sigma(0.6) = 1.66
    # the reverse SDE keeps every marginal: for data N(0, S^2) (score -x / Var), stepping back by dt the
    # drift changes Var by -2 E[x drift] dt and the noise adds g^2 dt; the net change must be -d std^2/dt dt
    # = -g^2 dt, so 2 E[x drift] = 2 g^2 (a wrong sign or factor in the drift breaks this)
    for t_value in (0.4, 0.9):
        t = torch.full((200000,), t_value)
        var = (0.25 + sde.marginal_std(t) ** 2)[:, None]
        x = torch.randn(200000, 1) * var.sqrt()
        drift = sde.reverse_drift(x, t, -x / var)
        assert (2 * x * drift).mean().item() == pytest.approx(2 * sde.g(t[0]).item() ** 2, rel=0.02)


def test_kl_closed_form():
    mu, logvar = torch.randn(6, 3), torch.randn(6, 3)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    ref = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(kl_to_standard_normal(mu, logvar), ref, atol=1e-5)
    assert torch.all(kl_to_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)) == 0)


# ---- eq. 6: the DSM floor ----

def toy_data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 2, 3, generator=g)  # 8 "images" of shape (2, 3); distances ~ 2-3


T = 0.54  # sigma(T) ~ 1: the mixture components overlap, so the floor is far from 0


def test_mixture_score_is_gradient_of_log_mixture():
    data, x = toy_data().double(), torch.randn(5, 2, 3, dtype=torch.float64).requires_grad_()
    std = torch.full((5,), 0.7, dtype=torch.float64)
    comp = torch.distributions.Normal(data[None], 0.7).log_prob(x[:, None]).flatten(2).sum(2)
    (grad,) = torch.autograd.grad(torch.logsumexp(comp, 1).sum(), x)
    assert torch.allclose(mixture_score(x, data, std), grad)


def mc_batch(data, n, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = data[torch.randint(len(data), (n,), generator=g)]
    noise = torch.randn(x0.shape, generator=g)
    t = torch.full((n,), T)
    return x0, noise, t, sde.marginal_std(t), sde.perturb(x0, t, noise)


def test_dsm_floor_positive_and_reached_by_exact_marginal_score():
    data = toy_data()
    floor, se = dsm_floor(sde, data, T, n_mc=20000, generator=torch.Generator().manual_seed(1))
    assert floor > 20 * se > 0  # the floor is a real, non-zero constant
    x0, noise, t, std, x_t = mc_batch(data, 20000, seed=2)  # independent draws
    per = dsm_loss(mixture_score(x_t, data, std), noise, std)
    assert abs(per.mean().item() - floor) < 4 * math.hypot(se, per.std().item() / math.sqrt(20000))


def test_dsm_equals_floor_plus_explicit_score_matching():
    """eq. 6: J_DSM(s) = floor + E lambda ||s - grad log p_t||^2 for any s; the floor does not depend on s."""
    data = toy_data()
    floor, se = dsm_floor(sde, data, T, n_mc=20000, generator=torch.Generator().manual_seed(3))
    x0, noise, t, std, x_t = mc_batch(data, 20000, seed=4)
    true = mixture_score(x_t, data, std)
    for s in (torch.zeros_like(x_t), 0.5 * true, true + 0.3 * torch.sin(x_t)):
        dsm = dsm_loss(s, noise, std)
        esm = (std[:, None, None] ** 2 * (s - true).square()).flatten(1).sum(1)
        diff = dsm - esm
        assert abs(diff.mean().item() - floor) < 4 * math.hypot(se, diff.std().item() / math.sqrt(20000))
        assert dsm.mean() > floor


def conditional_score(x_t, data, std, code_of_data, code):
    """grad log p_t(x_t | z) for the data points whose code equals each sample's code."""
    out = torch.empty_like(x_t)
    for c in code.unique():
        rows = code == c
        out[rows] = mixture_score(x_t[rows], data[code_of_data == c], std[rows])
    return out


def test_code_that_knows_x0_removes_the_floor():
    """DRL's argument: with z = E(x_0) the loss can go below the floor, to 0 if z identifies x_0."""
    data = toy_data()
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(len(data), (20000,), generator=g)
    x0, noise = data[idx], torch.randn(20000, 2, 3, generator=g)
    t = torch.full((20000,), T)
    std, x_t = sde.marginal_std(t), sde.perturb(x0, t, noise)
    floor = dsm_loss(mixture_score(x_t, data, std), noise, std).mean().item()
    perfect = dsm_loss(conditional_score(x_t, data, std, torch.arange(8), idx), noise, std).mean().item()
    half = torch.arange(8) % 2  # a code with one bit of information about x_0
    partial = dsm_loss(conditional_score(x_t, data, std, half, idx % 2), noise, std).mean().item()
    assert perfect < 1e-6 * floor
    assert 0.05 * floor < partial < 0.95 * floor


@pytest.mark.parametrize("precond", ["paper", "edm"])
def test_both_parametrisations_reach_the_floor_through_the_network_output(precond):
    """The net's output F maps to a score exactly: the F that stands for the exact marginal score
    gives back that score, so the DSM floor stays reachable with either parametrisation."""
    from unet import network_target, precondition
    data = toy_data()
    floor, se = dsm_floor(sde, data, T, n_mc=20000, generator=torch.Generator().manual_seed(1))
    x0, noise, t, std, x_t = mc_batch(data, 20000, seed=2)
    std4 = std[:, None, None].double()
    exact = mixture_score(x_t, data, std).double()
    f = network_target(exact, x_t.double(), std4, precond, sigma_data=0.3)
    score = precondition(f, x_t.double(), std4, precond, sigma_data=0.3)
    assert torch.allclose(score, exact, rtol=1e-9, atol=1e-9)
    per = dsm_loss(score.float(), noise, std)
    assert abs(per.mean().item() - floor) < 4 * math.hypot(se, per.std().item() / math.sqrt(20000))


def test_edm_target_has_unit_scale_at_every_noise_level():
    """EDM's F target for a clean image, (x0 - c_skip x) / c_out, has variance ~1 from std 0.01 to 50
    for data of std sigma_data; the paper's (-noise) has too, but its x_0 error grows with std."""
    from unet import network_target
    torch.manual_seed(0)
    sigma_data = 0.4
    x0 = sigma_data * torch.randn(20000, 1, dtype=torch.float64)
    for s in (0.01, 0.5, 5.0, 50.0):
        std = torch.full((20000, 1), s, dtype=torch.float64)
        x = x0 + std * torch.randn_like(x0)
        kernel = -(x - x0) / std ** 2  # the regression target of DSM
        f = network_target(kernel, x, std, "edm", sigma_data)
        assert abs(f.std().item() - 1) < 0.03, s


def test_edm_weighting_is_karras_lambda_on_the_denoised_image():
    """weighting "edm": lambda(std) ||D - x0||^2 with lambda = (std^2 + sd^2) / (std sd)^2 and
    D = x_t + std^2 s; weighting "paper": ||D - x0||^2 / std^2."""
    torch.manual_seed(0)
    x0, noise, score = torch.rand(6, 1, 4, 4), torch.randn(6, 1, 4, 4), torch.randn(6, 1, 4, 4)
    std, sd = torch.tensor([0.01, 0.1, 1.0, 3.0, 10.0, 50.0]), 0.35
    x_t = x0 + std[:, None, None, None] * noise
    err = (x_t + std[:, None, None, None] ** 2 * score - x0).square().flatten(1).sum(1)
    assert torch.allclose(dsm_loss(score, noise, std, "paper"), err / std ** 2, rtol=1e-4)
    karras = (std ** 2 + sd ** 2) / (std * sd) ** 2
    assert torch.allclose(dsm_loss(score, noise, std, "edm", sd), karras * err, rtol=1e-4)


def test_lognormal_time_sampling():
    """ln std ~ N(p_mean, p_std^2) in the noise std actually used (marginal_std), clipped in std."""
    torch.manual_seed(0)
    t = t_lognormal(200000, sde, p_mean=0.5, p_std=0.8)
    log_std = torch.log(sde.marginal_std(t))
    assert abs(log_std.mean().item() - 0.5) < 0.01 and abs(log_std.std().item() - 0.8) < 0.01
    t = t_lognormal(100000, sde, p_mean=-1.2, p_std=1.2)  # EDM's: 0.24% of draws below 0.01
    std = sde.marginal_std(t)
    assert torch.isclose(std.min(), torch.tensor(0.01), rtol=1e-3)  # clipped at sigma_min, not below it
    assert abs((std < 0.0101).float().mean().item() - 0.0024) < 0.001
    t = t_lognormal(10000, sde, p_mean=0.0, p_std=10.0)  # clipped to the SDE's range
    assert t.min() > 0.04 and t.max() <= 1.0 and (t == 1.0).any()


class Recorder:
    """A stand-in score net that records the times and codes the loss gives it, and returns a score
    that depends on both (so gradients reach the code)."""

    def __call__(self, x_t, t, z):
        self.t, self.z = t, z
        return -x_t * t[:, None, None, None] + (0 if z is None else z.sum(1)[:, None, None, None])


def test_a_uniform_share_mixes_uniform_t_into_any_mode():
    """sigma-uniform with a share u of uniform-t draws: P(std <= s) = u F_uniform(s) + (1 - u) F_sigma(s)."""
    torch.manual_seed(0)
    u, n, net = 0.3, 400000, Recorder()
    DRLLoss(sde, t_sigma_uniform, uniform_share=u)(None, net, torch.zeros(n, 1, 1, 1))
    std = sde.marginal_std(net.t)
    for s in (0.05, 0.5, 1.0, 5.0, 25.0):
        f_uniform = (sde.t_of_std(torch.tensor(s)) - 1e-5) / (1 - 1e-5)
        f_sigma = (math.sqrt(s ** 2 + sde.sigma_min ** 2) - sde.sigma_min) / (sde.sigma_max - sde.sigma_min)
        assert abs((std <= s).float().mean().item() - (u * f_uniform + (1 - u) * f_sigma)) < 0.003


@pytest.mark.parametrize("trains_encoder", [True, False])
def test_the_uniform_share_trains_the_encoder_only_if_asked(trains_encoder):
    """share_trains_encoder=False: the code's gradient comes from sample_t's draws alone (t = 0.4 here),
    while the score net still sees every draw."""
    torch.manual_seed(0)
    x0, net = torch.randn(512, 1, 2, 2), Recorder()
    z = torch.randn(512, 3, requires_grad=True)
    loss = DRLLoss(sde, partial(t_fixed, t=0.4), uniform_share=0.5, share_trains_encoder=trains_encoder)
    loss(lambda x, t: (z, None), net, x0)[0].backward()
    shared = net.t != 0.4  # the uniform share's draws
    assert 150 < shared.sum() < 360 and torch.all(z.grad[~shared].abs().sum(1) > 0)
    assert torch.all(z.grad[shared].abs().sum(1) > 0) == trains_encoder


def test_drl_loss_reads_every_constructor_parameter():
    """Mutants: the weighting, the code and the noise level each change the loss they reach."""
    torch.manual_seed(0)
    x0, net = torch.randn(64, 1, 2, 2), Recorder()
    code = torch.randn(64, 3)

    def value(**kw):
        torch.manual_seed(1)
        encoder = kw.pop("encoder", lambda x, t: (code, None))
        return DRLLoss(sde, **kw)(encoder, net, x0)

    base = value(sample_t=partial(t_fixed, t=0.4))[0]
    assert value(sample_t=partial(t_fixed, t=0.6))[0] != base and torch.allclose(net.t, torch.full((64,), 0.6))
    assert value(sample_t=partial(t_fixed, t=0.4), weighting="edm", sigma_data=0.3)[0] != base
    assert value(sample_t=partial(t_fixed, t=0.4), encoder=lambda x, t: (2 * code, None))[0] != base
    assert torch.equal(net.z, 2 * code)
    loss, reg = value(sample_t=partial(t_fixed, t=0.4), l1=0.1)
    assert loss == base and reg == pytest.approx(0.1 * code.abs().sum(1).mean().item())
    logvar = torch.full((64, 3), -1.0)
    _, kl = value(sample_t=partial(t_fixed, t=0.4), kl=0.5, encoder=lambda x, t: (code, logvar))
    assert kl == pytest.approx(0.5 * kl_to_standard_normal(code, logvar).mean().item())


def test_the_loss_copies_with_sde_py_alone(tmp_path):
    """sde.py imports torch alone: copied into an empty folder, it builds and runs the DRL loss."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    shutil.copy(Path(__file__).parent.parent / "sde.py", tmp_path)
    script = ("import torch; from functools import partial; from sde import VESDE, DRLLoss, t_fixed\n"
              "loss = DRLLoss(VESDE(), partial(t_fixed, t=0.4), weighting='edm', sigma_data=0.3)\n"
              "print(loss(lambda x, t: (x.flatten(1), None), lambda x, t, z: -x + z.sum(1)[:, None, None, None],"
              " torch.rand(4, 1, 2, 2))[0].item())")
    out = subprocess.run([sys.executable, "-E", "-s", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) > 0
