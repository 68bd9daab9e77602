"""Predictor-corrector sampling from a train_drl.py run, conditioned on a learned code.

The samplers live in samplers.py (predictor-corrector, score_sde's; Heun, EDM's), which needs only a
`score_fn(x, t)` and the SDE, so it can be copied into any project. This stage feeds them
s(x_t, t, z) with z from the encoder, a grid, or the prior:

    python sample.py --ckpt runs/fashion_mnist-drl/ckpt.pt --mode recon --steps 500 --out samples
    python sample.py --ckpt RUN/ckpt.pt --mode grid --steps 500       # 2-D codes (paper Fig. 2/3)
    python sample.py --ckpt RUN/ckpt.pt --mode prior                  # VDRL: z ~ N(0, I)
    python sample.py --ckpt RUN/ckpt.pt --mode swap --t-swap 0.5      # denoise A with B's code (Fig. 10)
    python sample.py --ckpt RUN/ckpt.pt --mode diversity --n 16       # many samples of one code (Fig. 11)
    python sample.py --ckpt RUN/ckpt.pt --mode uncond                 # `--objective score` runs
    python sample.py --ckpt RUN/ckpt.pt --mode recon --nn-eval        # does the code steer? (100 images)

Writes OUT/MODE.png and OUT/MODE.json (mode, steps, score evaluations, seconds, images/s).
"""
if __name__ == "__main__":
    import interrupts
    interrupts.quiet_until_ready()

import argparse
import io
import json
import time
from functools import partial
from types import SimpleNamespace

import torch
from torchvision.utils import save_image

from checkpoint import CheckpointError, WriteError, load_run, save_together
from data import DataError, load_dataset
from runtime import Parser, autocast, check_numbers, exit_on, pick_device, prepare_out
from samplers import PREDICTORS, heun_sample, pc_sample


# ---- the stage ----

def parse_args(argv=None):
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a train_drl.py run with a score net")
    p.add_argument("--mode", choices=MODES, default="recon",
                   help="recon: samples from test images' codes; swap: denoise A with B's code; diversity: many "
                        "samples of one code; grid: a grid over a 2-d code; prior: z ~ N(0, I) (vdrl); uncond: "
                        "no code (--objective score)")
    p.add_argument("--out", default="samples", help="folder of MODE.png and MODE.json")
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
    p.add_argument("--predictor", choices=PREDICTORS, default="reverse_diffusion", help="pc: the predictor step")
    p.add_argument("--corrector-steps", type=int, default=1, help="pc: Langevin corrector steps per step")
    p.add_argument("--snr", type=float, default=0.16, help="pc: the corrector's signal-to-noise ratio")
    p.add_argument("--t-init", type=float, default=1.0, help="start from N(0, sigma(t_init)^2 I) (Fig. 5)")
    p.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=True,
                   help="pc: the last step returns the noise-free mean")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="the EMA weights")
    p.add_argument("--data-dir", default=None, help="default: the run's own --data-dir")
    p.add_argument("--device", default=None, help="cpu, cuda or mps; default cuda, then mps, then cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
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
    latent = check_mode(args, ckpt, encoder)
    run = ckpt["args"]
    test_set = None
    if args.mode in ("recon", "diversity", "swap") or (args.mode == "grid" and args.range is None):
        with exit_on(DataError):
            test_set = load_dataset(run["dataset"], args.data_dir or run["data_dir"], train=False,
                                    classes=run.get("classes"))
    check_sizes(args, test_set)
    out = prepare_out(args.out)  # after every check: bad input leaves no folder behind
    shape = tuple(ckpt["config"]["score_net"][k] for k in ("in_ch", "image_size", "image_size"))
    ctx = SimpleNamespace(args=args, sde=sde, encoder=encoder, latent=latent, shape=shape, device=device,
                          score_fn_for=partial(score_fn_for, score_net, encoder, device),
                          test_images=partial(test_images, test_set, device), sample_fn=make_sampler(args, device),
                          info={})
    t0 = time.perf_counter()
    made = MODES[args.mode](ctx)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    info = dict(mode=args.mode, ckpt=str(args.ckpt), sampler=args.sampler, steps=args.steps, predictor=args.predictor,
                corrector_steps=args.corrector_steps, snr=args.snr, churn=args.churn, t_init=args.t_init,
                shuffle_codes=args.shuffle_codes, nfe_per_image=made["nfe"], images=made["images"], seconds=seconds,
                images_per_s=made["images"] / seconds, device=str(device), **ctx.info)
    if device.type == "cuda":
        info["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    png = io.BytesIO()
    save_image(made["grid"].clamp(0, 1), png, format="png", nrow=made["nrow"], padding=1, pad_value=0.5)
    files = {out / f"{args.mode}.png": png.getvalue(), out / f"{args.mode}.json": json.dumps(info, indent=2)}
    if args.save_tensor:  # the samples themselves (and recon's source labels), for benchmarks/sample_quality.py
        files[out / f"{args.mode}.pt"] = {k: made[k].cpu() for k in ("samples", "labels") if k in made}
    with exit_on(WriteError):
        save_together(files)
    print(json.dumps(info))


def check_mode(args, ckpt, encoder):
    """The code size of the run, once the run is known to sample what --mode asks; notes on runs whose
    score net saw too few noise levels for clean samples."""
    run = ckpt["args"]
    if ckpt["config"]["score_net"] is None:
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
    if args.mode == "grid" and encoder is not None and encoder.time_cond:
        raise SystemExit(f"error: --mode grid lays out codes z of a static encoder; {args.ckpt} codes each image at "
                         f"every t (E(x0, t)): use --mode recon")
    if run["t_sampling"] == "sigma" and not run["t_uniform_share"]:
        print("note: this run drew sigma uniformly in training, so its score net saw few noise levels below 1 "
              "and samples keep a grain; for samples train with --t-uniform-share or --t-sampling uniform")
    if run["t_sampling"] == "fixed" and not run["t_uniform_share"]:
        print(f"note: this run's score net learned one noise level (t = {run['t_fixed']}, --t-uniform-share 0), "
              f"so the sampler's other levels are untrained and its samples are not images; for samples train "
              f"with the cpu preset")
    return latent


MAX_IMAGES, MAX_STEPS = 20_000, 100_000  # ceilings of one call: more is hours, or more memory than a machine has


def check_sizes(args, test_set):
    """--n, --per-code and --steps against the test set and the ceilings, before --out is made."""
    images = {"recon": args.n * args.per_code, "diversity": args.n, "swap": args.n}.get(args.mode, args.n ** 2)
    need = {"recon": args.n, "diversity": 1, "swap": 2 * args.n}.get(args.mode, 0)
    if test_set is not None and need > len(test_set[0]):
        raise SystemExit(f"error: --mode {args.mode} --n {args.n} needs {need} test images and the run's test set has "
                         f"{len(test_set[0])}; lower --n")
    if images > MAX_IMAGES:
        raise SystemExit(f"error: --mode {args.mode} with --n {args.n}" + (f" --per-code {args.per_code}"
                         if args.mode == "recon" else "") + f" makes {images} images, over this stage's {MAX_IMAGES}; "
                         f"lower them (or run the stage several times with other --seed)")
    if args.steps > MAX_STEPS:
        raise SystemExit(f"error: --steps {args.steps} is over {MAX_STEPS} (the papers' PC sampler takes 1000); lower it")


def score_fn_for(score_net, encoder, device, z=None, x0=None):
    """s(x, t, z) with a fixed code z, or the code of clean images x0 (recomputed per t if the
    encoder is time-conditioned)."""
    if x0 is not None and not encoder.time_cond:
        z = encoder(x0)[0]

    def score_fn(x, t):
        with autocast(device):
            code = encoder(x0, t)[0] if x0 is not None and encoder.time_cond else z
            return score_net(x, t, code).float()
    return score_fn


def test_images(test_set, device, n, labels=False):
    """The first n test images in [0, 1] on the device (and their labels)."""
    images, y = test_set
    x = images[:n].to(device).float() / 255
    return (x, y[:n].to(device)) if labels else x


def make_sampler(args, device):
    """sample_fn(sde, score_fn, shape[, x_init, t_init]) -> (x, nfe) of the sampler the flags name."""
    if args.sampler == "heun":
        return partial(heun_sample, steps=args.steps, churn=args.churn, s_tmin=args.s_tmin, s_tmax=args.s_tmax,
                       s_noise=args.s_noise, t_init=args.t_init, device=device)
    return partial(pc_sample, steps=args.steps, predictor=args.predictor, snr=args.snr,
                   corrector_steps=args.corrector_steps, t_init=args.t_init, denoise=args.denoise, device=device)


# ---- the modes: each ctx -> dict(grid, nrow, samples, nfe, images[, labels]) ----

def from_codes(ctx, z, nrow):
    """Samples of the given codes (or none, for a plain score model), one per code, laid out nrow a row."""
    x, nfe = ctx.sample_fn(ctx.sde, ctx.score_fn_for(z=z), (len(z) if z is not None else nrow * nrow, *ctx.shape))
    return dict(grid=x, nrow=nrow, samples=x, nfe=nfe, images=len(x))


def mode_uncond(ctx):
    return from_codes(ctx, None, ctx.args.n)


def mode_prior(ctx):
    return from_codes(ctx, torch.randn(ctx.args.n ** 2, ctx.latent, device=ctx.device), ctx.args.n)


def mode_grid(ctx):
    """A grid of 2-D codes over [-range, range]^2, or where the test images' codes lie (2nd-98th
    percentile per axis): a KL weight of 1e-5 barely pulls the codes towards N(0, I)."""
    args, device = ctx.args, ctx.device
    if args.range is not None:
        lo, hi = torch.full((2,), -args.range, device=device), torch.full((2,), args.range, device=device)
    else:
        with torch.no_grad(), autocast(device):
            codes = torch.cat([ctx.encoder(x)[0].float() for x in ctx.test_images(2000).split(500)])
        lo, hi = codes.quantile(torch.tensor([0.02, 0.98], device=device), dim=0)
        ctx.info["range"] = [lo.tolist(), hi.tolist()]
    axes = [torch.linspace(lo[i].item(), hi[i].item(), args.n, device=device) for i in range(2)]
    z1, z2 = torch.meshgrid(axes[0], axes[1].flip(0), indexing="xy")  # z1 grows rightwards, z2 upwards
    return from_codes(ctx, torch.stack([z1, z2], -1).reshape(-1, 2), args.n)


def mode_recon(ctx):
    """Each test image (left) and samples of its code; --shuffle-codes gives each another's code."""
    args = ctx.args
    k = args.per_code if args.mode == "recon" else args.n
    x0, y0 = ctx.test_images(args.n if args.mode == "recon" else 1, labels=True)
    donors = x0[derangement(len(x0), ctx.device)] if args.shuffle_codes else x0  # whose code each source gets
    src = donors.repeat_interleave(k, 0)
    x, nfe = ctx.sample_fn(ctx.sde, ctx.score_fn_for(x0=src), (len(src), *ctx.shape))
    rows = torch.cat([x0[:, None], x.reshape(len(x0), k, *ctx.shape)], 1)
    made = dict(grid=rows.flatten(0, 1), nrow=k + 1, samples=x, nfe=nfe, images=len(src),
                labels=y0.repeat_interleave(k, 0))  # each sample's source image's class
    if k > 1:  # diversity (Fig. 11): the pixel std among one code's samples, in [0, 1], averaged over pixels and codes
        ctx.info["per_code_pixel_std"] = x.clamp(0, 1).reshape(len(x0), k, -1).std(1).mean().item()
    if args.mode == "recon" and args.nn_eval:
        ctx.info.update(nn_eval(ctx.sde, ctx.score_fn_for, *ctx.test_images(100, labels=True), ctx.sample_fn))
        made["images"] += 200
    return made


def mode_swap(ctx):
    """Rows: images A, A perturbed to t_swap, images B, A denoised from t_swap with B's code."""
    args = ctx.args
    x0 = ctx.test_images(2 * args.n)
    a, b = x0[: args.n], x0[args.n:]
    t = torch.full((args.n,), args.t_swap, device=ctx.device)
    x_init = ctx.sde.perturb(a, t, torch.randn_like(a))
    x, nfe = ctx.sample_fn(ctx.sde, ctx.score_fn_for(x0=b), (args.n, *ctx.shape), x_init=x_init, t_init=args.t_swap)
    return dict(grid=torch.cat([a, x_init, b, x]), nrow=args.n, samples=x, nfe=nfe, images=args.n)


MODES = dict(uncond=mode_uncond, prior=mode_prior, grid=mode_grid, recon=mode_recon, diversity=mode_recon,
             swap=mode_swap)


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
