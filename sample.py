"""Predictor-corrector sampling from a train_drl.py run, conditioned on a learned code.

The PC sampler of Song et al. (score_sde) for the VE SDE: a predictor step of the reverse SDE (eq. 2,
TMLR) and Langevin corrector steps. The sampler only needs a `score_fn(x, t)`, so it can be copied
into any project. The stage feeds it s(x_t, t, z) with z from the encoder, a grid, or the prior:

    python sample.py --ckpt runs/fashion_mnist-drl/ckpt.pt --mode recon --steps 500 --out samples
    python sample.py --ckpt RUN/ckpt.pt --mode grid --steps 500       # 2-D codes (paper Fig. 2/3)
    python sample.py --ckpt RUN/ckpt.pt --mode prior                  # VDRL: z ~ N(0, I)
    python sample.py --ckpt RUN/ckpt.pt --mode swap --t-swap 0.5      # denoise A with B's code (Fig. 10)
    python sample.py --ckpt RUN/ckpt.pt --mode diversity --n 16       # many samples of one code (Fig. 11)
    python sample.py --ckpt RUN/ckpt.pt --mode uncond                 # `--objective score` runs
    python sample.py --ckpt RUN/ckpt.pt --mode recon --nn-eval        # does the code steer? (100 images)

Writes OUT/MODE.png and OUT/MODE.json (mode, steps, score evaluations, seconds, images/s).
"""
import signal
import sys

if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    # Ctrl-C while torch loads or the data is read: one line, not a 40-line traceback
    signal.signal(signal.SIGINT, lambda *_: sys.exit("interrupted (Ctrl-C)"))

import argparse
import json
import math
import time
from functools import partial
from pathlib import Path

import torch
from torchvision.utils import save_image

from checkpoint import CheckpointError, load_run
from data import DataError, load_dataset
from runtime import autocast, check_numbers, exit_on, pick_device, prepare_out
from sde import _bc


# ---- predictors: one step from t to t_next < t; each returns (x, x_mean) ----

def reverse_diffusion(sde, score_fn, x, t, t_next):
    """Ancestral step of the discretised reverse SDE: the variance between t_next and t is removed."""
    var = _bc(sde.marginal_std(t) ** 2 - sde.marginal_std(t_next) ** 2, x)
    x_mean = x + var * score_fn(x, t)
    return x_mean + var.sqrt() * torch.randn_like(x), x_mean


def euler_maruyama(sde, score_fn, x, t, t_next):
    """Euler-Maruyama step of dx = [f - g^2 score] dt + g dw (eq. 2), backwards in time by dt = t - t_next."""
    dt = _bc(t - t_next, x)
    x_mean = x - sde.reverse_drift(x, t, score_fn(x, t)) * dt
    return x_mean + _bc(sde.g(t), x) * dt.sqrt() * torch.randn_like(x), x_mean


def probability_flow(sde, score_fn, x, t, t_next):
    """Deterministic step of the probability-flow ODE, dx = -g^2 score / 2 dt = -std score d(std).
    Euler in std (EDM's / DDIM's step) rather than in t: exact wherever std >> the data's scale."""
    std, std_next = _bc(sde.marginal_std(t), x), _bc(sde.marginal_std(t_next), x)
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


# ---- the stage ----

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--mode", choices=["grid", "recon", "prior", "swap", "diversity", "uncond"], default="recon")
    p.add_argument("--out", default="samples")
    p.add_argument("--n", type=int, default=8,
                   help="recon, swap: source images; diversity: samples; grid, prior, uncond: images per side")
    p.add_argument("--per-code", type=int, default=4, help="samples per code in recon mode")
    p.add_argument("--range", type=float, default=None,
                   help="grid: codes in [-R, R]^2 (default: where test images' codes lie, 2nd-98th percentile)")
    p.add_argument("--t-swap", type=float, default=0.5, help="swap: noise level the images are perturbed to")
    p.add_argument("--nn-eval", action="store_true", help="recon: nearest-neighbour test on 100 test images")
    p.add_argument("--shuffle-codes", action="store_true",
                   help="recon: condition each source on another source's code (the chance level of class agreement)")
    p.add_argument("--save-tensor", action="store_true",
                   help="also write OUT/MODE.pt: the samples (and, for recon, their sources' labels)")
    p.add_argument("--sampler", choices=["pc", "heun"], default="pc",
                   help="pc: predictor-corrector (the papers'); heun: EDM's 2nd-order ODE sampler, 2N-1 evaluations")
    p.add_argument("--steps", type=int, default=None, help="default 1000 (pc), 18 (heun)")
    p.add_argument("--churn", type=float, default=0.0, help="heun: EDM's S_churn (0: deterministic)")
    p.add_argument("--s-tmin", type=float, default=0.05, help="heun: churn only where std >= this (EDM's S_tmin)")
    p.add_argument("--s-tmax", type=float, default=50.0, help="heun: churn only where std <= this (EDM's S_tmax)")
    p.add_argument("--s-noise", type=float, default=1.003, help="heun: churn's noise inflation (EDM's S_noise)")
    p.add_argument("--predictor", choices=PREDICTORS, default="reverse_diffusion")
    p.add_argument("--corrector-steps", type=int, default=1)
    p.add_argument("--snr", type=float, default=0.16)
    p.add_argument("--t-init", type=float, default=1.0, help="start from N(0, sigma(t_init)^2 I) (Fig. 5)")
    p.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--data-dir", default=None, help="default: the run's own --data-dir")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 18 if args.sampler == "heun" else 1000
    if args.shuffle_codes and (args.mode != "recon" or args.n < 2):
        p.error("--shuffle-codes needs --mode recon and --n 2 or more (the codes are shuffled among the sources)")
    check_numbers(p, args, positive=("n", "per_code", "steps", "snr", "range"),
                  non_negative=("corrector_steps", "churn", "s_tmin", "s_tmax", "s_noise"), in_unit=("t_init", "t_swap"))
    try:
        args.device = str(pick_device(args.device))
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    with exit_on(CheckpointError):
        score_net, encoder, sde, ckpt = load_run(args.ckpt, device, ema=args.ema)
    out = prepare_out(args.out)  # after the checkpoint: a wrong --ckpt leaves no empty folder behind
    run = ckpt["args"]
    if score_net is None:
        raise SystemExit(f"error: {args.ckpt} is a {run['objective']} baseline with no score net to sample "
                         f"from; pass a drl, vdrl or score run")
    latent = ckpt["config"]["score_net"]["latent_dim"]
    vdrl = encoder is not None and encoder.probabilistic
    need = {"grid": latent == 2, "prior": vdrl, "uncond": latent == 0,
            "recon": latent > 0, "swap": latent > 0, "diversity": latent > 0}[args.mode]
    if not need:
        what = {"grid": "a 2-D code (train with --latent-dim 2)", "prior": "a VDRL run (--objective vdrl)",
                "uncond": "a plain score model (--objective score)"}.get(args.mode, "an encoder (--objective drl or vdrl)")
        raise SystemExit(f"error: --mode {args.mode} needs {what}; {args.ckpt} is a {run['objective']} run "
                         f"with latent_dim {latent}")
    shape = tuple(ckpt["config"]["score_net"][k] for k in ("in_ch", "image_size", "image_size"))
    if run.get("t_sampling") == "sigma":  # P(sigma < 1) = 2%: the last stretch of every sample is barely trained
        print("note: this run drew sigma uniformly in training (the cpu preset's choice for codes), so its score net "
              "saw few noise levels below 1 and samples keep a grain; for samples train with --t-sampling uniform")

    def score_fn_for(z=None, x0=None):
        """s(x, t, z) with a fixed code z, or the code of clean images x0 (recomputed per t if the
        encoder is time-conditioned)."""
        if x0 is not None and not encoder.time_cond:
            z = encoder(x0)[0]

        def score_fn(x, t):
            with autocast(device):
                code = encoder(x0, t)[0] if x0 is not None and encoder.time_cond else z
                return score_net(x, t, code).float()
        return score_fn

    def test_images(n, labels=False):
        with exit_on(DataError):
            images, y = load_dataset(run["dataset"], args.data_dir or run["data_dir"], train=False)
        x = images[:n].to(device).float() / 255
        return (x, y[:n].to(device)) if labels else x

    if args.sampler == "heun":  # sample_fn(sde, score_fn, shape[, x_init, t_init]) -> (x, nfe)
        sample_fn = partial(heun_sample, steps=args.steps, churn=args.churn, s_tmin=args.s_tmin, s_tmax=args.s_tmax,
                            s_noise=args.s_noise, t_init=args.t_init, device=device)
    else:
        sample_fn = partial(pc_sample, steps=args.steps, predictor=args.predictor, snr=args.snr,
                            corrector_steps=args.corrector_steps, t_init=args.t_init, denoise=args.denoise,
                            device=device)
    info, t0, n_images = {}, time.perf_counter(), 0
    if args.mode == "uncond":
        x, nfe = sample_fn(sde, score_fn_for(), (args.n * args.n, *shape))
        grid, nrow, n_images = x, args.n, args.n * args.n
    elif args.mode == "grid":
        if args.range is not None:
            lo, hi = torch.full((2,), -args.range, device=device), torch.full((2,), args.range, device=device)
        else:  # codes need not sit near N(0, I) (a KL weight of 1e-5 barely pulls them): span the data's
            with torch.no_grad(), autocast(device):
                codes = torch.cat([encoder(x)[0].float() for x in test_images(2000).split(500)])
            lo, hi = codes.quantile(torch.tensor([0.02, 0.98], device=device), dim=0)
            info["range"] = [lo.tolist(), hi.tolist()]
        axes = [torch.linspace(lo[i].item(), hi[i].item(), args.n, device=device) for i in range(2)]
        z1, z2 = torch.meshgrid(axes[0], axes[1].flip(0), indexing="xy")  # z1 grows rightwards, z2 upwards
        z = torch.stack([z1, z2], -1).reshape(-1, 2)
        x, nfe = sample_fn(sde, score_fn_for(z=z), (len(z), *shape))
        grid, nrow, n_images = x, args.n, len(z)
    elif args.mode == "prior":
        z = torch.randn(args.n * args.n, latent, device=device)
        x, nfe = sample_fn(sde, score_fn_for(z=z), (len(z), *shape))
        grid, nrow, n_images = x, args.n, len(z)
    elif args.mode in ("recon", "diversity"):
        k = args.per_code if args.mode == "recon" else args.n
        x0, y0 = test_images(args.n if args.mode == "recon" else 1, labels=True)
        donors = x0[derangement(len(x0), device)] if args.shuffle_codes else x0  # whose code each source gets
        src, source_labels = donors.repeat_interleave(k, 0), y0.repeat_interleave(k, 0)
        x, nfe = sample_fn(sde, score_fn_for(x0=src), (len(src), *shape))
        rows = torch.cat([x0[:, None], x.reshape(len(x0), k, *shape)], 1)
        grid, nrow, n_images = rows.flatten(0, 1), k + 1, len(src)
        if args.mode == "recon" and args.nn_eval:
            info.update(nn_eval(sde, score_fn_for, *test_images(100, labels=True), sample_fn))
            n_images += 200
    else:  # swap
        x0 = test_images(2 * args.n)
        a, b = x0[: args.n], x0[args.n:]
        t = torch.full((args.n,), args.t_swap, device=device)
        x_init = sde.perturb(a, t, torch.randn_like(a))
        x, nfe = sample_fn(sde, score_fn_for(x0=b), (args.n, *shape), x_init=x_init, t_init=args.t_swap)
        grid, nrow, n_images = torch.cat([a, x_init, b, x]), args.n, args.n
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    save_image(grid.clamp(0, 1), out / f"{args.mode}.png", nrow=nrow, padding=1, pad_value=0.5)
    if args.save_tensor:  # the samples themselves, for benchmarks/sample_quality.py
        saved = dict(samples=x.cpu())
        if args.mode == "recon":
            saved["labels"] = source_labels.cpu()  # each sample's source image's class
        torch.save(saved, out / f"{args.mode}.pt")
    info = dict(mode=args.mode, ckpt=str(args.ckpt), sampler=args.sampler, steps=args.steps, predictor=args.predictor,
                corrector_steps=args.corrector_steps, snr=args.snr, churn=args.churn, t_init=args.t_init,
                shuffle_codes=args.shuffle_codes,
                nfe_per_image=nfe, images=n_images, seconds=seconds, images_per_s=n_images / seconds,
                device=str(device), **info)
    if device.type == "cuda":
        info["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    (out / f"{args.mode}.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))


def derangement(n, device):
    """A random cyclic shift of 0..n-1 by 1..n-1 places: a permutation in which nothing stays put."""
    return (torch.arange(n, device=device) + torch.randint(1, n, ()).item()) % n


def nn_eval(sde, score_fn_for, x0, labels, sample_fn):
    """Does the code steer the sample? Sample once per source image, conditioned on its own code, then
    on the codes shuffled among the sources (no image keeps its own). For each sample, find the nearest
    source image (pixel L2): how often is it the sample's source (chance 1 / len(x0)), and how often has
    it the source's class label? Shuffled codes give the chance level of both."""
    n = len(x0)
    perm = derangement(n, x0.device)
    result = {}
    for name, codes_of in (("own_code", x0), ("shuffled_codes", x0[perm])):
        x, _ = sample_fn(sde, score_fn_for(x0=codes_of), x0.shape)
        nearest = torch.cdist(x.flatten(1), x0.flatten(1)).argmin(1)
        result[f"nn_is_source_{name}"] = (nearest == torch.arange(n, device=x0.device)).float().mean().item()
        result[f"nn_same_class_{name}"] = (labels[nearest] == labels).float().mean().item()
    result["nn_candidates"] = n
    return result


if __name__ == "__main__":
    main()
