"""The flags of train_drl.py: the presets (cpu, code, paper), the parser (every default shown in --help, the
preset's where it fills a flag), the checks that turn a value which would fail later, or train
silently on nonsense, into one argparse line, and the networks the flags build.

    python train_drl.py --help                  # every flag, its default and what each preset sets
    config = net_config(args, sigma_data)       # the networks' constructor arguments, saved in the checkpoint
"""
import argparse
import textwrap

from checkpoint import default_ch_mult, encoder_config
from data import DATASETS, IMAGE_SHAPE
from runtime import check_numbers, pick_device

DESCRIPTION = ("Train a DRL model: an encoder E(x_0[, t]) and a score net s(x_t, t, z) by denoising score "
               "matching (TMLR paper, eq. 7-9), or a baseline that trains the same encoder another way.")
OBJECTIVES = ("drl", "vdrl", "score", "ae", "vae", "simclr_gauss")
DIFFUSION = ("drl", "vdrl", "score")  # the objectives with a score net
# Presets fill every flag the user does not pass. "paper" follows the papers (app. D, ICML workshop:
# 28x28x32 and 14x14x64, two residual blocks, 80k steps; Adam 2e-4, 5k warm-up, clip 1, EMA 0.999;
# lambda = sigma^2, t uniform). "cpu" is what learned the best code in 15 minutes on a 2-core CPU
# with clean samples too (RESULTS.md; 8000 steps are 15 minutes there): a 16-channel encoder beside an
# 8-channel score net without middle attention (most of the step's time goes to the encoder), EDM's
# preconditioning and weighting, half the times sigma uniform (high noise: the class) and half uniform
# in t (every scale, so the low noise levels where samples get their texture are trained too), the
# code also as a spatial map read from z, layer-normalised, lr 1e-3 (the encoder's 0.3 times that), a
# 256-d code (the autoencoder baseline gets the same encoder and code).
PRESETS = {
    "paper": dict(ch=32, ch_mult=None, num_res_blocks=2, batch_size=128, steps=80_000, warmup=5000, lr=2e-4,
                  log_every=100, save_every=5000, ema=0.999, precond="paper", weighting="paper",
                  t_sampling="uniform", latent_norm=False, code_map=False, code_map_from="emb", l1=1e-5,
                  probe_n=0, lr_decay="none", enc_ch=None, mid_attn=True, t_uniform_share=0.0, enc_lr_mult=1.0,
                  latent_dim=128),
    "cpu": dict(ch=8, enc_ch=16, ch_mult="1,2", num_res_blocks=1, mid_attn=False, batch_size=64, steps=8000,
                warmup=200, lr=1e-3, enc_lr_mult=0.3, log_every=100, save_every=2000, ema=0.995, precond="edm",
                weighting="edm", t_sampling="sigma", t_uniform_share=0.5, latent_norm=None, code_map=True,
                code_map_from="z", l1=0.0, probe_n=5000, lr_decay="none", latent_dim=256),
}
# "code": the cpu preset for a code alone (no samples: its score net learns one noise level). A 4-channel
# score net and one noise level, t = 0.4 (sigma 0.30): the best code of RESULTS.md at 15 minutes. Its step
# makes 1.36x the cpu preset's images/s on 2 threads, so 15 minutes there are 11,000 steps.
PRESETS["code"] = {**PRESETS["cpu"], **dict(ch=4, t_sampling="fixed", t_fixed=0.4, t_uniform_share=0.0, steps=11000)}
MIN_NORM_DIM = 8  # a layer norm over D dims leaves D - 1 of them: over 1 it maps every code to 0, over 2 to ±(1, -1)
# flags that define what a run learns: resuming with another value would train a different run
RESUME_MUST_MATCH = ("dataset", "objective", "enc_lr_mult", "t_sampling", "t_uniform_share", "share_trains", "t_fixed",
                     "p_mean", "p_std", "weighting", "precond", "latent_dim", "time_cond", "sigma_min", "sigma_max")
# what a checkpoint saved before a flag existed trained with
ADDED_LATER = dict(t_uniform_share=0.0, share_trains="both", enc_lr_mult=1.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=DESCRIPTION, epilog=presets_help(),
                                formatter_class=HelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="cpu",
                   help="cpu: minutes on a laptop; code: the same for a code alone (no samples); paper: the "
                        "papers' set-up, sized for a GPU. It fills every flag left out; the defaults shown are "
                        "those of --preset as given (see below)")
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--data-dir", default=None, help="default: ./data, then the system's copy "
                                                     "(/usr/share/datasets), then a download into ./data")
    p.add_argument("--out", default=None, help="run folder (default runs/DATASET-OBJECTIVE[-tc])")
    p.add_argument("--objective", choices=OBJECTIVES, default="drl",
                   help="drl, vdrl, score (no encoder); baselines: ae, vae, simclr_gauss")
    p.add_argument("--time-cond", action=argparse.BooleanOptionalAction, default=False,
                   help="time-conditioned encoder E(x0, t), eq. 9")
    p.add_argument("--latent-dim", type=int, default=128)
    p.add_argument("--latent-norm", action=argparse.BooleanOptionalAction,
                   help=f"layer-normalise z before the score net's latent embedding; needs --latent-dim of at least "
                        f"{MIN_NORM_DIM} (a 2-d code would become ±(1, -1)); None: on from {MIN_NORM_DIM} dimensions")
    p.add_argument("--code-map", action=argparse.BooleanOptionalAction,
                   help="also add the code to the score net as a coarse spatial map (beyond the papers)")
    p.add_argument("--code-map-from", choices=["z", "emb"],
                   help="the code map reads z itself (every direction can matter) or its --emb-dim-wide embedding")
    p.add_argument("--code-map-every-res", action=argparse.BooleanOptionalAction, default=False,
                   help="with --code-map, every lower resolution of the score net gets its own map of the code "
                        "too (per-resolution projections of z; beyond the papers)")
    p.add_argument("--decorr", type=float, default=0.0,
                   help="drl: weight of a penalty on the correlation between code dimensions (beyond the papers)")
    p.add_argument("--precond", choices=["paper", "edm"], help="score = F / std (paper) or EDM's denoiser")
    p.add_argument("--weighting", choices=["paper", "edm"], help="lambda = sigma^2 (paper) or EDM's")
    p.add_argument("--t-sampling", choices=["uniform", "sigma", "fixed", "lognormal"])
    p.add_argument("--t-uniform-share", type=float,
                   help="this share of the training times is drawn uniformly in t instead, whatever --t-sampling "
                        "says: low noise levels keep training, for clean samples (beyond the papers)")
    p.add_argument("--share-trains", choices=["both", "score-net"], default="both",
                   help="what the --t-uniform-share draws train: both networks, or the score net only (the code "
                        "then learns from --t-sampling's draws alone; beyond the papers)")
    p.add_argument("--t-stratified", action=argparse.BooleanOptionalAction, default=False,
                   help="one training time in each of B equal strata of the batch's distribution: the same "
                        "distribution, a lower-variance loss (VDM's low-discrepancy sampler; beyond the papers)")
    p.add_argument("--noise-per-image", type=int, default=1,
                   help="score-net samples per encoded image: each code is trained at this many noise levels per "
                        "step (not with --time-cond; beyond the papers)")
    p.add_argument("--t-fixed", type=float, default=0.5)
    p.add_argument("--t-eps", type=float, default=1e-5)
    p.add_argument("--p-mean", type=float, default=-1.2, help="lognormal: mean of ln sigma")
    p.add_argument("--p-std", type=float, default=1.2, help="lognormal: std of ln sigma")
    p.add_argument("--l1", type=float, help="L1 weight on z (drl; 0 with --latent-norm, which makes it moot)")
    p.add_argument("--kl", type=float, default=None, help="KL weight (default 1e-5 for vdrl, 1 for vae)")
    p.add_argument("--aug-std", type=float, default=0.3, help="simclr_gauss: std of the pixel noise of a view")
    p.add_argument("--temperature", type=float, default=0.5, help="simclr_gauss: NT-Xent temperature")
    p.add_argument("--sigma-min", type=float, default=0.01)
    p.add_argument("--sigma-max", type=float, default=50.0)
    p.add_argument("--ch", type=int)
    p.add_argument("--enc-ch", type=int, default=None, help="encoder width (default --ch)")
    p.add_argument("--ch-mult", help="channel multipliers per resolution, e.g. 1,2,2 "
                                     "(default 1,2 for 28px, 1,2,2 for 32px)")
    p.add_argument("--num-res-blocks", type=int)
    p.add_argument("--attn-res", default="", help="resolutions with self-attention, e.g. 14")
    p.add_argument("--emb-dim", type=int, default=None,
                   help="width of the score net's conditioning vector (time + code embedding) read by every FiLM "
                        "layer; at most this many directions of z reach FiLM (default 4*ch)")
    p.add_argument("--patch", type=int, default=1,
                   help="every network works on PATCH x PATCH pixel blocks folded into channels (space-to-depth): "
                        "a quarter of the positions per layer at 2, for the encoder, score net and decoder alike "
                        "(beyond the papers)")
    p.add_argument("--score-patch", type=int, default=None,
                   help="the score net's --patch alone (default: --patch): a cheaper score net beside a "
                        "full-resolution encoder (beyond the papers)")
    p.add_argument("--mid-attn", action=argparse.BooleanOptionalAction,
                   help="self-attention between the score net's two middle blocks")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--steps", type=int)
    p.add_argument("--minutes", type=float, default=None,
                   help="stop (and save) after this many minutes of training: equal wall-clock budgets")
    p.add_argument("--batch-size", type=int, help="global batch, split over the torchrun processes")
    p.add_argument("--lr", type=float)
    p.add_argument("--enc-lr-mult", type=float,
                   help="the encoder's lr is --lr times this (the score net's or decoder's is --lr): beyond the papers")
    p.add_argument("--warmup", type=int)
    p.add_argument("--lr-decay", choices=["none", "cosine"],
                   help="after the warm-up: constant lr, or a cosine to zero at the end of the budget "
                        "(--steps, or --minutes when that comes first)")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema", type=float)
    p.add_argument("--amp", choices=["bf16", "fp16", "off"], default=None, help="default: bf16 on CUDA, off elsewhere")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=False,
                   help="CUDA: capture the whole training step once as a CUDA graph and replay it (no launch "
                        "overhead; the eager step stays the reference); needs --amp bf16 or off and one process")
    p.add_argument("--device", default=None, help="default: cuda, then mps, then cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int)
    p.add_argument("--save-every", type=int)
    p.add_argument("--save-minutes", type=float, default=10.0, help="also save after this many minutes")
    p.add_argument("--eval-n", type=int, default=1000, help="test images in the fixed-noise eval loss")
    p.add_argument("--probe-n", type=int, help="at each save, linear-probe the EMA encoder on this many "
                                               "training and test images (0: off)")
    p.add_argument("--benchmark", type=int, default=0, metavar="N", help="time N steps, print images/s, exit")
    preset = argparse.ArgumentParser(add_help=False)
    preset.add_argument("--preset", choices=PRESETS, default="cpu")
    p.set_defaults(**PRESETS[preset.parse_known_args(argv)[0].preset])  # before --help prints them
    for action in p._actions:  # a flag without help text still shows its default
        if action.help is None:
            action.help = "(default: %(default)s)"
    args = p.parse_args(argv)
    args.ch_mult = args.ch_mult or ",".join(map(str, default_ch_mult(IMAGE_SHAPE[args.dataset][1])))
    check_args(p, args)
    if args.latent_norm is None:
        args.latent_norm = args.latent_dim >= MIN_NORM_DIM
    args.enc_ch = args.enc_ch or args.ch
    args.out = args.out or f"runs/{args.dataset}-{args.objective}" + ("-tc" if args.time_cond else "")
    try:
        args.device = str(pick_device(args.device))
    except ValueError as e:
        p.error(str(e))
    args.amp = args.amp or ("bf16" if args.device.startswith("cuda") else "off")
    if args.cuda_graph and not args.device.startswith("cuda"):
        p.error(f"--cuda-graph needs a CUDA device (this run uses {args.device}); leave the flag out")
    if args.cuda_graph and args.amp == "fp16":
        p.error("--cuda-graph needs --amp bf16 or off: fp16's loss scaler checks for overflow on the host")
    args.kl = args.kl if args.kl is not None else (1.0 if args.objective == "vae" else 1e-5)
    return args


def check_args(p, args):
    """One argparse-style line for every value that would fail later, or train silently on nonsense."""
    check_numbers(p, args, positive=("patch", "score_patch", "latent_dim", "noise_per_image", "ch", "enc_ch", "emb_dim",
                                     "num_res_blocks", "steps", "batch_size", "log_every", "save_every", "eval_n", "lr",
                                     "enc_lr_mult", "ema", "sigma_min", "sigma_max", "temperature", "p_std", "grad_clip",
                                     "save_minutes", "minutes"),
                  non_negative=("warmup", "probe_n", "benchmark", "l1", "kl", "decorr", "dropout", "aug_std"))
    if args.emb_dim and args.emb_dim % 2:
        p.error(f"--emb-dim must be even (half sine, half cosine features of t), not {args.emb_dim}")
    if not args.ema < 1:
        p.error(f"--ema must lie in (0, 1), not {args.ema}")
    if not args.sigma_min < args.sigma_max:
        p.error(f"--sigma-min ({args.sigma_min}) must be below --sigma-max ({args.sigma_max})")
    if not 0 < args.t_fixed <= 1:
        p.error(f"--t-fixed must lie in (0, 1] (t = 0 has no noise to remove), not {args.t_fixed}")
    if not 0 <= args.t_uniform_share <= 1:
        p.error(f"--t-uniform-share must lie in [0, 1], not {args.t_uniform_share}")
    if not 0 < args.t_eps < 1:
        p.error(f"--t-eps must lie in (0, 1), not {args.t_eps}")
    if args.noise_per_image > 1 and args.time_cond:
        p.error("--noise-per-image above 1 needs a static encoder: a time-conditioned one codes each t anew")
    if args.time_cond and args.objective not in ("drl", "vdrl"):
        p.error(f"--time-cond needs --objective drl or vdrl (a {args.objective} encoder has no t)")
    if args.latent_norm and args.latent_dim < MIN_NORM_DIM:
        p.error(f"--latent-norm needs --latent-dim {MIN_NORM_DIM} or more: it would map a {args.latent_dim}-d code to "
                f"a few fixed points, so the score net could not read it; pass --no-latent-norm")
    size = IMAGE_SHAPE[args.dataset][1]
    args.score_patch = args.score_patch or args.patch
    for flag, value in (("--patch", args.patch), ("--score-patch", args.score_patch)):
        if size % value:
            p.error(f"{flag} {value} must divide the image size ({size} px on {args.dataset}), e.g. {flag} 2")
    mult = args.ch_mult.split(",")
    if not all(m.isdigit() and int(m) > 0 for m in mult):
        p.error(f"--ch-mult must be positive whole numbers separated by commas, e.g. 1,2; not {args.ch_mult!r}")
    resolutions = []  # of the encoder's grid and the score net's (they differ with --score-patch)
    for patch in dict.fromkeys((args.patch, args.score_patch)):
        resolutions.append(size // patch)
        for _ in mult[1:]:
            resolutions.append((resolutions[-1] + 1) // 2)
    attn = [r for r in args.attn_res.split(",") if r]
    if not all(r.isdigit() and int(r) in resolutions for r in attn):
        p.error(f"--attn-res must name resolutions the net has ({','.join(map(str, resolutions))} for --ch-mult "
                f"{args.ch_mult} on {args.dataset}), separated by commas; not {args.attn_res!r}")


def net_config(args, sigma_data):
    """Constructor arguments of every network: stored in the checkpoint so no later stage repeats them."""
    in_ch, size, _ = IMAGE_SHAPE[args.dataset]
    arch = dict(in_ch=in_ch, image_size=size, ch=args.ch, num_res_blocks=args.num_res_blocks,
                ch_mult=[int(m) for m in args.ch_mult.split(",")],
                attn_res=[int(r) for r in args.attn_res.split(",") if r],
                sigma_min=args.sigma_min, sigma_max=args.sigma_max)
    latent = 0 if args.objective == "score" else args.latent_dim
    config = dict(score_net=None, encoder=None, decoder=None, projector=None)
    if args.objective in DIFFUSION:
        config["score_net"] = dict(arch, latent_dim=latent, dropout=args.dropout, sigma_data=sigma_data,
                                   precond=args.precond, latent_norm=args.latent_norm and latent > 0,
                                   code_map=args.code_map and latent > 0, code_map_from=args.code_map_from,
                                   mid_attn=args.mid_attn, emb_dim=args.emb_dim,
                                   code_map_every_res=args.code_map_every_res, patch=folded(args.score_patch))
    if latent:
        config["encoder"] = encoder_config(in_ch, size, args.enc_ch, latent, arch["ch_mult"], args.num_res_blocks,
                                           attn_res=arch["attn_res"], sigma_min=args.sigma_min,
                                           sigma_max=args.sigma_max, probabilistic=args.objective in ("vdrl", "vae"),
                                           time_cond=args.time_cond, patch=folded(args.patch))
    if args.objective in ("ae", "vae"):
        config["decoder"] = dict(in_ch=in_ch, image_size=size, ch=args.enc_ch, ch_mult=arch["ch_mult"],
                                 latent_dim=latent, patch=folded(args.patch))  # mirrors the encoder
    if args.objective == "simclr_gauss":
        config["projector"] = dict(latent_dim=latent)
    return config


def folded(patch):
    """A constructor's patch: None (unfolded) at 1, so configs saved before --patch existed still match."""
    return patch if patch > 1 else None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows every default (the preset's where it fills the flag) and keeps the epilog's lines."""


def presets_help():
    rows = [textwrap.fill(f"{name}: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items()
                                                  if v is not None), 100, initial_indent="  ", subsequent_indent="    ")
            for name, values in PRESETS.items()]
    return "presets (what each sets when the flag is left out):\n" + "\n".join(rows)
