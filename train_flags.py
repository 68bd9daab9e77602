"""The flags of train_drl.py: the presets (cpu, paper), the parser, the checks, and the networks
and loss the flags build.

A preset is a complete recipe: every flag it names takes its value unless the user passes the flag,
and --help shows the chosen preset's values as the defaults. Flags no preset names have one default,
in the parser. Nothing is filled in after parsing; `check_args` only checks.

    python train_drl.py --help                  # every flag, its default and what each preset sets
    config = net_config(args, sigma_data)       # the networks' constructor arguments, saved in the checkpoint
    loss = make_loss(args, sigma_data)          # the objective as an object of explicit parameters
"""
import argparse
import textwrap
from functools import partial

from baselines import AutoencoderLoss, SimCLRGaussLoss
from data import DATASETS, IMAGE_SHAPE
from runtime import Parser, check_numbers, int_list
from sde import VESDE, DRLLoss, t_fixed, t_lognormal, t_sigma_uniform, t_uniform

DESCRIPTION = ("Train a DRL model: an encoder E(x_0[, t]) and a score net s(x_t, t, z) by denoising score "
               "matching (TMLR paper, eq. 7-9), or a baseline that trains the same encoder another way.")
OBJECTIVES = ("drl", "vdrl", "score", "ae", "vae", "simclr_gauss")
DIFFUSION = ("drl", "vdrl", "score")  # the objectives with a score net
T_SAMPLING = dict(uniform=t_uniform, sigma=t_sigma_uniform, fixed=t_fixed, lognormal=t_lognormal)
# Presets. "paper" follows the papers (app. D, ICML workshop: 28x28x32 and 14x14x64, two residual
# blocks, 80k steps; Adam 2e-4, 5k warm-up, EMA 0.999; lambda = sigma^2, t uniform, a 128-d code with
# L1 1e-5). "cpu" learns a code and samples in 15 one-core minutes (5470 steps; RESULTS.md's budget):
# a 16-channel encoder beside an 8-channel score net without middle attention, EDM's preconditioning and
# weighting; the code learns at one noise level, t = 0.4 (sigma 0.30), where denoising needs most of what
# separates the classes, while 30% of the times are uniform in t and train the score net alone, for clean
# samples; the code also as a spatial map and layer-normalised, lr 1e-3 (the encoder's 0.3 times that),
# a 256-d code (the autoencoder baseline gets the same encoder and code).
PRESETS = {
    "paper": dict(ch=32, enc_ch=32, ch_mult="1,2", num_res_blocks=2, mid_attn=True, batch_size=128, steps=80_000,
                  warmup=5000, lr=2e-4, enc_lr_mult=1.0, ema=0.999, precond="paper", weighting="paper",
                  t_sampling="uniform", t_uniform_share=0.0, share_trains="both", latent_dim=128,
                  latent_norm=False, code_map=False, l1=1e-5, kl=1e-5, log_every=100, save_every=5000, probe_n=0),
    "cpu": dict(ch=8, enc_ch=16, ch_mult="1,2", num_res_blocks=1, mid_attn=False, batch_size=64, steps=5470,
                warmup=200, lr=1e-3, enc_lr_mult=0.3, ema=0.995, precond="edm", weighting="edm",
                t_sampling="fixed", t_uniform_share=0.3, share_trains="score-net", latent_dim=256,
                latent_norm=True, code_map=True, l1=0.0, kl=1e-5, log_every=100, save_every=2000, probe_n=5000),
}
# "cifar": the ICML paper's CIFAR-10 set-up (appendix): three resolutions of 32 channels (32x32, 16x16, 8x8),
# two residual blocks each, 90k iterations, otherwise the papers' recipe.
PRESETS["cifar"] = dict(PRESETS["paper"], ch_mult="1,1,1", steps=90_000)
MIN_NORM_DIM = 8  # a layer norm over D dims leaves D - 1 of them: over 1 it maps every code to 0, over 2 to ±(1, -1)
# flags that define what a run learns: resuming with another value would train a different run (the seed too:
# the resumed random stream is the saved one, so another --seed would be recorded but not used). The others
# (--steps, --minutes, --save-every, --log-every, --device, ...) may change on resume.
RESUME_MUST_MATCH = ("dataset", "classes", "seed", "objective", "enc_lr_mult", "t_sampling", "t_uniform_share", "share_trains",
                     "t_fixed", "p_mean", "p_std", "weighting", "precond", "latent_dim", "time_cond", "sigma_min", "sigma_max")


def parse_args(argv=None):
    p = Parser(description=DESCRIPTION, epilog=presets_help())
    add_recipe_flags(p)
    add_run_flags(p)
    preset = argparse.ArgumentParser(add_help=False)
    preset.add_argument("--preset", choices=PRESETS, default="cpu")
    p.set_defaults(**PRESETS[preset.parse_known_args(argv)[0].preset])  # before --help prints them
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def add_recipe_flags(p):
    """What a run learns: the objective, the code, the noise levels, the networks."""
    p.add_argument("--preset", choices=PRESETS, default="cpu",
                   help="cpu: minutes on a laptop; paper: the papers' set-up, sized for a GPU; cifar: the ICML "
                        "paper's CIFAR-10 set-up (pass --dataset cifar10). It sets every flag it names (below) "
                        "unless passed")
    p.add_argument("--dataset", choices=DATASETS, default="mnist", help="the training images")
    p.add_argument("--classes", type=int_list, default=None,
                   help="train on these classes alone, e.g. 0,1,2 (the ICML paper's first three of CIFAR-10); the "
                        "later stages read the run's")
    p.add_argument("--data-dir", default=None, help="where the data set is; default ./data, then the system's "
                                                     "copy (/usr/share/datasets), then a download into ./data")
    p.add_argument("--out", default=None, help="run folder; default runs/DATASET-OBJECTIVE[-tc]")
    p.add_argument("--objective", choices=OBJECTIVES, default="drl",
                   help="drl, vdrl, score (no encoder); baselines: ae, vae, simclr_gauss")
    p.add_argument("--time-cond", action=argparse.BooleanOptionalAction, default=False,
                   help="time-conditioned encoder E(x0, t), eq. 9")
    # the code, and how the score net reads it
    p.add_argument("--latent-dim", type=int, help="dimensions of the code z")
    p.add_argument("--latent-norm", action=argparse.BooleanOptionalAction,
                   help=f"layer-normalise z before the score net reads it (codes of fewer than {MIN_NORM_DIM} "
                        "dimensions are read as they are: a norm over so few would erase them)")
    p.add_argument("--code-map", action=argparse.BooleanOptionalAction,
                   help="also add z to the score net as a coarse spatial map (beyond the papers)")
    p.add_argument("--l1", type=float, help="drl: weight of the L1 norm of z")
    p.add_argument("--kl", type=float,
                   help="vdrl: weight of the code's KL to N(0, I), eq. 8 (the vae baseline always weighs it 1, "
                        "as the ELBO does)")
    # the noise levels: what the code encodes (granularity control) and what the score net learns
    p.add_argument("--t-sampling", choices=T_SAMPLING,
                   help="training times: uniform in t, sigma uniform, one fixed t, or EDM's log-normal sigma")
    p.add_argument("--t-fixed", type=float, default=0.4, help="--t-sampling fixed: the one time")
    p.add_argument("--p-mean", type=float, default=-1.2, help="--t-sampling lognormal: mean of ln sigma")
    p.add_argument("--p-std", type=float, default=1.2, help="--t-sampling lognormal: std of ln sigma")
    p.add_argument("--t-uniform-share", type=float,
                   help="this share of the times is drawn uniformly in t instead, so every noise level that the "
                        "sampler visits is trained")
    p.add_argument("--share-trains", choices=["both", "score-net"],
                   help="what the --t-uniform-share draws train: both networks, or the score net only (the code "
                        "then learns from --t-sampling's draws alone)")
    p.add_argument("--precond", choices=["paper", "edm"],
                   help="how the U-Net's output F becomes a score: paper, F predicts the noise and score = F / std; "
                        "edm, EDM's denoiser D = c_skip x + c_out F and score = (D - x) / std^2 (unet.ScoreNet)")
    p.add_argument("--weighting", choices=["paper", "edm"],
                   help="lambda(t) of the loss: paper, sigma^2; edm, EDM's, constant per x_0 error at high noise")
    p.add_argument("--sigma-min", type=float, default=0.01, help="the VE SDE's sigma(0)")
    p.add_argument("--sigma-max", type=float, default=50.0, help="the VE SDE's sigma(1)")
    # the networks
    p.add_argument("--ch", type=int, help="score net width (channels at the first resolution)")
    p.add_argument("--enc-ch", type=int, help="encoder width (the AE's decoder mirrors it)")
    p.add_argument("--ch-mult", help="channel multipliers per resolution, e.g. 1,2,2")
    p.add_argument("--num-res-blocks", type=int, help="residual blocks per resolution")
    p.add_argument("--mid-attn", action=argparse.BooleanOptionalAction,
                   help="self-attention between the score net's two middle blocks")


def add_run_flags(p):
    """How a run trains: the budget, the optimiser, the device, the logs."""
    p.add_argument("--steps", type=int, help="optimiser steps")
    p.add_argument("--minutes", type=float, default=None,
                   help="stop (and save) after this many minutes of training: equal wall-clock budgets")
    p.add_argument("--batch-size", type=int, help="global batch, split over the torchrun processes")
    p.add_argument("--lr", type=float, help="AdamW learning rate after a linear warm-up")
    p.add_argument("--enc-lr-mult", type=float, help="the encoder's lr is --lr times this (beyond the papers)")
    p.add_argument("--warmup", type=int, help="warm-up steps")
    p.add_argument("--ema", type=float, help="EMA decay of the weights that the later stages read")
    # where, and how fast
    p.add_argument("--amp", choices=["bf16", "fp16", "off"], default="bf16",
                   help="mixed precision on CUDA (CPU and MPS run float32)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the nets")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=False,
                   help="CUDA: capture the whole training step once as a CUDA graph and replay it (no launch "
                        "overhead); needs --amp bf16 or off and one process")
    p.add_argument("--device", default=None, help="cpu, cuda or mps; default cuda, then mps, then cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, batches, times and noise")
    p.add_argument("--log-every", type=int, help="a log line every this many steps (and every 30 s)")
    p.add_argument("--save-every", type=int, help="a checked save every this many steps (and every 10 minutes)")
    p.add_argument("--eval-n", type=int, default=1000, help="test images in the fixed-noise eval loss at each save")
    p.add_argument("--probe-n", type=int,
                   help="at each save, linear-probe the EMA encoder on this many train and test images (0: off)")
    p.add_argument("--benchmark", type=int, default=0, metavar="N", help="time N steps, print images/s, exit")


def check_args(p, args):
    """One argparse-style line for every value that would fail later, or train silently on nonsense."""
    check_numbers(p, args, positive=("latent_dim", "ch", "enc_ch", "num_res_blocks", "steps", "batch_size", "log_every",
                                     "save_every", "eval_n", "lr", "enc_lr_mult", "ema", "sigma_min", "sigma_max",
                                     "p_std", "minutes"),
                  non_negative=("warmup", "probe_n", "benchmark", "l1", "kl"))
    if 0 < args.probe_n < 100:
        p.error(f"--probe-n must be 0 (no probe) or at least 100 (a probe's fewest codes), not {args.probe_n}")
    if not args.ema < 1:
        p.error(f"--ema must lie in (0, 1), not {args.ema}")
    if not args.sigma_min < args.sigma_max:
        p.error(f"--sigma-min ({args.sigma_min}) must be below --sigma-max ({args.sigma_max})")
    if not 0 < args.t_fixed <= 1:
        p.error(f"--t-fixed must lie in (0, 1] (t = 0 has no noise to remove), not {args.t_fixed}")
    if not 0 <= args.t_uniform_share <= 1:
        p.error(f"--t-uniform-share must lie in [0, 1], not {args.t_uniform_share}")
    if args.time_cond and args.objective not in ("drl", "vdrl"):
        p.error(f"--time-cond needs --objective drl or vdrl (a {args.objective} encoder has no t)")
    if args.cuda_graph and args.amp == "fp16":
        p.error("--cuda-graph needs --amp bf16 or off: fp16's loss scaler checks for overflow on the host")
    mult = args.ch_mult.split(",")
    if not all(m.isdigit() and int(m) > 0 for m in mult):
        p.error(f"--ch-mult must be positive whole numbers separated by commas, e.g. 1,2; not {args.ch_mult!r}")


def net_config(args, sigma_data):
    """Constructor arguments of every network: stored in the checkpoint so no later stage repeats them."""
    in_ch, size, _ = IMAGE_SHAPE[args.dataset]
    arch = dict(in_ch=in_ch, image_size=size, ch_mult=[int(m) for m in args.ch_mult.split(",")],
                num_res_blocks=args.num_res_blocks)
    latent = 0 if args.objective == "score" else args.latent_dim
    config = dict(score_net=None, encoder=None, decoder=None, projector=None)
    if args.objective in DIFFUSION:
        config["score_net"] = dict(arch, ch=args.ch, latent_dim=latent, sigma_min=args.sigma_min,
                                   sigma_max=args.sigma_max, sigma_data=sigma_data, precond=args.precond,
                                   latent_norm=args.latent_norm and latent >= MIN_NORM_DIM,
                                   code_map=args.code_map and latent > 0, mid_attn=args.mid_attn)
    if latent:
        config["encoder"] = dict(arch, ch=args.enc_ch, latent_dim=latent, time_cond=args.time_cond,
                                 probabilistic=args.objective in ("vdrl", "vae"), sigma_min=args.sigma_min,
                                 sigma_max=args.sigma_max)
    if args.objective in ("ae", "vae"):
        config["decoder"] = dict(in_ch=in_ch, image_size=size, ch=args.enc_ch, ch_mult=arch["ch_mult"],
                                 latent_dim=latent)  # mirrors the encoder
    if args.objective == "simclr_gauss":
        config["projector"] = dict(latent_dim=latent)
    return config


def make_loss(args, sigma_data):
    """The objective as an object of explicit parameters: sde.DRLLoss, or a baseline's loss."""
    if args.objective in DIFFUSION:
        kw = dict(fixed=dict(t=args.t_fixed), lognormal=dict(p_mean=args.p_mean, p_std=args.p_std))
        kw = kw.get(args.t_sampling, {})  # the keyword arguments of the mode's sampler
        loss = DRLLoss(VESDE(args.sigma_min, args.sigma_max), partial(T_SAMPLING[args.t_sampling], **kw),
                       uniform_share=args.t_uniform_share, share_trains_encoder=args.share_trains == "both",
                       weighting=args.weighting, sigma_data=sigma_data, l1=args.l1, kl=args.kl)
        return loss
    if args.objective in ("ae", "vae"):
        return AutoencoderLoss(kl=1.0)
    return SimCLRGaussLoss(aug_std=0.3, temperature=0.5)


def presets_help():
    rows = [textwrap.fill(f"{name}: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items()),
                          100, initial_indent="  ", subsequent_indent="    ")
            for name, values in PRESETS.items()]
    return "presets (what each sets when the flag is left out):\n" + "\n".join(rows)
