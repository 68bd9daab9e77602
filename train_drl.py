"""Train a DRL model: an encoder E(x_0[, t]) and a score net s(x_t, t, z) by denoising score matching.

TMLR paper, eq. 7 (DRL), eq. 8 (VDRL), eq. 9 (time-conditioned encoder); `--objective score` is
the plain score model s(x_t, t), whose loss cannot fall below the DSM floor of eq. 6. The paper's
baselines (Fig. 4) train the same encoder another way: `ae` (a decoder reconstructs x_0 from z),
`vae` (the same with a probabilistic encoder and the ELBO's KL weight 1) and `simclr_gauss` (SimCLR's
NT-Xent loss, where the only augmentation is additive Gaussian pixel noise).

    python train_drl.py --dataset mnist                       # the paper's MNIST set-up (GPU-sized)
    python train_drl.py --dataset fashion_mnist --preset cpu  # minutes on a laptop
    python train_drl.py --dataset shapes --preset cpu --objective vdrl --latent-dim 2
    python train_drl.py --dataset mnist --benchmark 50        # images/s of the training step
    torchrun --nproc_per_node 4 train_drl.py --dataset mnist  # DistributedDataParallel, same outputs

Writes OUT/ckpt.pt (one dict, `torch.load(p, weights_only=True)`), OUT/config.json and
OUT/stats.jsonl. Running the same command again resumes from OUT/ckpt.pt.
"""
import argparse
import copy
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from data import DATASETS, IMAGE_SHAPE, DataError, build_nets, load_dataset, save_atomic
from encoder import nt_xent, reparameterise
from sde import VESDE, dsm_loss, kl_to_standard_normal

# Presets fill every flag the user does not pass. "paper" follows the papers (app. D, ICML
# workshop: two resolutions 28x28x32, 14x14x64, two residual blocks, 80k steps; Adam 2e-4, 5k warm-up,
# clip 1, EMA 0.999); "cpu" is a small model and budget that gives a useful result in minutes on CPU.
OBJECTIVES = ("drl", "vdrl", "score", "ae", "vae", "simclr_gauss")
DIFFUSION = ("drl", "vdrl", "score")  # the objectives with a score net
PRESETS = {
    "paper": dict(ch=32, ch_mult=None, num_res_blocks=2, batch_size=128, steps=80_000, warmup=5000,
                  log_every=100, save_every=5000, ema=0.999),
    "cpu": dict(ch=16, ch_mult="1,2", num_res_blocks=1, batch_size=64, steps=3000, warmup=200,
                log_every=50, save_every=500, ema=0.995),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=PRESETS, default="paper")
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--out", default=None, help="run folder (default runs/DATASET-OBJECTIVE)")
    p.add_argument("--objective", choices=OBJECTIVES, default="drl",
                   help="drl, vdrl, score (no encoder); baselines: ae, vae, simclr_gauss")
    p.add_argument("--time-cond", action=argparse.BooleanOptionalAction, default=False,
                   help="time-conditioned encoder E(x0, t), eq. 9")
    p.add_argument("--latent-dim", type=int, default=128)
    p.add_argument("--t-sampling", choices=["uniform", "sigma", "fixed"], default="uniform")
    p.add_argument("--t-fixed", type=float, default=0.5)
    p.add_argument("--t-eps", type=float, default=1e-5)
    p.add_argument("--l1", type=float, default=1e-5, help="L1 weight on z (drl)")
    p.add_argument("--kl", type=float, default=None, help="KL weight (default 1e-5 for vdrl, 1 for vae)")
    p.add_argument("--aug-std", type=float, default=0.3, help="simclr_gauss: std of the pixel noise of a view")
    p.add_argument("--temperature", type=float, default=0.5, help="simclr_gauss: NT-Xent temperature")
    p.add_argument("--sigma-min", type=float, default=0.01)
    p.add_argument("--sigma-max", type=float, default=50.0)
    p.add_argument("--ch", type=int)
    p.add_argument("--ch-mult", help="channel multipliers per resolution, e.g. 1,2,2 "
                                     "(default 1,2 for 28px, 1,2,2 for 32px)")
    p.add_argument("--num-res-blocks", type=int)
    p.add_argument("--attn-res", default="", help="resolutions with self-attention, e.g. 14")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, help="global batch, split over the torchrun processes")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema", type=float)
    p.add_argument("--amp", choices=["bf16", "fp16", "off"], default=None, help="default: bf16 on CUDA, off elsewhere")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--device", default=None, help="default: cuda, then mps, then cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int)
    p.add_argument("--save-every", type=int)
    p.add_argument("--eval-n", type=int, default=1000, help="test images in the fixed-noise eval loss")
    p.add_argument("--benchmark", type=int, default=0, metavar="N", help="time N steps, print images/s, exit")
    preset = p.parse_known_args(argv)[0].preset
    p.set_defaults(**PRESETS[preset])
    args = p.parse_args(argv)
    args.ch_mult = args.ch_mult or ("1,2" if IMAGE_SHAPE[args.dataset][1] == 28 else "1,2,2")
    args.out = args.out or f"runs/{args.dataset}-{args.objective}"
    args.device = args.device or ("cuda" if torch.cuda.is_available() else
                                  "mps" if torch.backends.mps.is_available() else "cpu")
    args.amp = args.amp or ("bf16" if args.device.startswith("cuda") else "off")
    args.kl = args.kl if args.kl is not None else (1.0 if args.objective == "vae" else 1e-5)
    if args.time_cond and args.objective not in ("drl", "vdrl"):
        p.error(f"--time-cond needs --objective drl or vdrl (a {args.objective} encoder has no t)")
    return args


def net_config(args):
    """Constructor arguments of both networks: stored in the checkpoint so no later stage repeats them."""
    in_ch, size, _ = IMAGE_SHAPE[args.dataset]
    arch = dict(in_ch=in_ch, image_size=size, ch=args.ch, num_res_blocks=args.num_res_blocks,
                ch_mult=[int(m) for m in args.ch_mult.split(",")],
                attn_res=[int(r) for r in args.attn_res.split(",") if r],
                sigma_min=args.sigma_min, sigma_max=args.sigma_max)
    latent = 0 if args.objective == "score" else args.latent_dim
    config = dict(score_net=None, encoder=None, decoder=None, projector=None)
    if args.objective in DIFFUSION:
        config["score_net"] = dict(arch, latent_dim=latent, dropout=args.dropout)
    if latent:
        config["encoder"] = dict(arch, latent_dim=latent, probabilistic=args.objective in ("vdrl", "vae"),
                                 time_cond=args.time_cond)
    if args.objective in ("ae", "vae"):
        config["decoder"] = dict(in_ch=in_ch, image_size=size, ch=args.ch, ch_mult=arch["ch_mult"], latent_dim=latent)
    if args.objective == "simclr_gauss":
        config["projector"] = dict(latent_dim=latent)
    return config


def main(argv=None):
    """Train; returns the (score_net, encoder) modules (None where the run has none) for inspection."""
    args = parse_args(argv)
    device = torch.device(args.device)
    # torchrun sets these; each process owns one GPU (or CPU share) and a 1/world share of the batch
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if args.batch_size % world:
            raise SystemExit(f"error: --batch-size {args.batch_size} does not split over {world} processes")
    batch = args.batch_size // world
    torch.manual_seed(args.seed + rank)  # different noise and t per process; DDP syncs the weights
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out = Path(args.out)
    ckpt_path = out / "ckpt.pt"

    # ---- data: whole data set as uint8 on the device; random batches are one index op ----
    try:
        images, _ = load_dataset(args.dataset, args.data_dir, train=True)
        test_images, _ = load_dataset(args.dataset, args.data_dir, train=False)
    except DataError as e:
        raise SystemExit(f"error: {e}")
    images = images.to(device)
    eval_x0 = test_images[: args.eval_n].to(device).float() / 255
    data_gen = torch.Generator(device=device).manual_seed(args.seed + rank)  # each process its own batches
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format

    # ---- networks, EMA copies, optimizer ----
    config = net_config(args)
    nets = {k: m.to(device, memory_format=memory_format) for k, m in build_nets(config).items()}
    # the modules the training forward calls: DDP-wrapped (its constructor broadcasts rank 0's weights)
    train_nets = {k: DistributedDataParallel(m) for k, m in nets.items()} if world > 1 else dict(nets)
    emas = {k: copy.deepcopy(m).eval().requires_grad_(False) for k, m in nets.items()}
    params = [p for m in nets.values() for p in m.parameters()]
    fused = device.type in ("cuda", "cpu")
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=fused)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    sde = VESDE(args.sigma_min, args.sigma_max)
    n_params = sum(p.numel() for p in params)

    step = 0
    if ckpt_path.exists() and not args.benchmark:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        same_data = all(ckpt["args"].get(k) == getattr(args, k) for k in ("dataset", "t_sampling", "t_fixed"))
        present = lambda c: {k: v for k, v in c.items() if v}  # runs saved before a net slot existed
        if present(ckpt.get("config", {})) != present(config) or not same_data:
            raise SystemExit(f"error: {ckpt_path} holds a run with other networks, objective or data; "
                             f"pass the flags it was trained with (see {out}/config.json) or another --out")
        for k in nets:
            nets[k].load_state_dict(ckpt[k])
            emas[k].load_state_dict(ckpt["ema_" + k])
        opt.load_state_dict(ckpt["opt"])
        scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        data_gen.set_state(ckpt["rng"]["data"])
        if device.type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
        step = ckpt["step"]
        if world > 1:  # the saved RNG state is rank 0's: give each process its own stream again
            seed = (args.seed * 1_000_003 + step) * 1009 + rank
            torch.manual_seed(seed)
            data_gen.manual_seed(seed)
        if rank == 0:
            print(f"resuming {ckpt_path} from step {step}")
        if step >= args.steps:
            print(f"already trained to step {step} >= --steps {args.steps}: raise --steps to train on")
            return finish(world, nets)
    if args.compile:  # in place: state_dict keys stay free of compile prefixes; EMA copies stay eager
        for m in nets.values():
            m.compile()

    def loss_terms(x0, m):
        """The objective's loss and the code's regulariser, each averaged over the batch; m holds the
        networks to use (the training ones, or the EMA copies for evaluation)."""
        zero = torch.zeros((), device=device)
        if args.objective in DIFFUSION:  # DSM loss, eq. 7 (drl), 8 (vdrl), 9 (time-conditioned)
            t = sde.sample_t(x0.shape[0], args.t_sampling, args.t_fixed, args.t_eps, device)
            noise = torch.randn_like(x0)
            std = sde.marginal_std(t)
            x_t = sde.perturb(x0, t, noise)
            with autocast:
                z, mu, logvar = reparameterise(*m["encoder"](x0, t)) if "encoder" in m else (None,) * 3
                score = m["score_net"](x_t, t, z)
            loss = dsm_loss(score, noise, std).mean()
        elif args.objective == "simclr_gauss":  # two views of each image that differ only by pixel noise
            views = x0.repeat(2, 1, 1, 1)
            views = views + args.aug_std * torch.randn_like(views)
            with autocast:
                h = m["projector"](m["encoder"](views)[0])
            return nt_xent(*h.chunk(2), args.temperature), zero
        else:  # ae, vae: x_0 from z alone; Bernoulli likelihood of the intensities in [0, 1]
            with autocast:
                z, mu, logvar = reparameterise(*m["encoder"](x0))
                logits = m["decoder"](z)
            loss = F.binary_cross_entropy_with_logits(logits.float(), x0, reduction="none").flatten(1).sum(1).mean()
        if logvar is not None:
            reg = args.kl * kl_to_standard_normal(mu, logvar).mean()
        elif args.objective == "drl":
            reg = args.l1 * z.float().abs().sum(1).mean()
        else:
            reg = zero
        return loss, reg

    def train_step(x0, step):
        lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
        for group in opt.param_groups:
            group["lr"] = lr
        loss, reg = loss_terms(x0, train_nets)
        scaler.scale(loss + reg).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        decay = min(args.ema, (1 + step) / (10 + step))  # EMA warm-up: early averages forget fast
        for k in nets:
            torch._foreach_lerp_(list(emas[k].parameters()), list(nets[k].parameters()), 1 - decay)
        return loss.detach(), reg.detach()

    def next_batch():
        idx = torch.randint(len(images), (batch,), device=device, generator=data_gen)
        return (images[idx].float() / 255).contiguous(memory_format=memory_format)

    @torch.no_grad()
    def eval_loss():
        """The loss of the EMA nets on fixed test images, t and noise: comparable across runs."""
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(1234)
            total = sum(loss_terms(x0, emas)[0].item() * len(x0) for x0 in eval_x0.split(250))
        return total / len(eval_x0)

    if args.benchmark:
        for m in nets.values():
            m.train()
        for _ in range(5):  # warm-up (and compilation)
            train_step(next_batch(), 10**6)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.benchmark):
            train_step(next_batch(), 10**6)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        flops = count_step_flops(lambda x0: loss_terms(x0, train_nets), next_batch()) / batch  # per image
        ips = args.benchmark * args.batch_size / dt
        mem = f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == "cuda" else ""
        peak = peak_bf16_flops(device)
        mfu = f", MFU {flops * ips / world / peak:.1%} of {peak / 1e12:.0f} TFLOP/s bf16" if peak else ""
        if rank == 0:
            print(f"benchmark: {args.objective} {n_params / 1e6:.2f}M params, batch {args.batch_size}, "
                  f"{world} process(es), amp {args.amp}, compile {args.compile}, {device}: {ips:.1f} images/s, "
                  f"{flops / 1e9:.3f} GFLOP/image, {flops * ips / 1e12:.3f} TFLOP/s{mfu}{mem}")
        return finish(world, nets)

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dict(args=vars(args), nets=config), indent=2))

    def save(step):
        rng = {"torch": torch.get_rng_state(), "data": data_gen.get_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        state = lambda m: {k: v.detach().cpu() for k, v in m.state_dict().items()} if m is not None else None
        weights = {}
        for k in config:  # every slot, None where this run has no such network
            weights[k], weights["ema_" + k] = state(nets.get(k)), state(emas.get(k))
        save_atomic(dict(kind="drl_train", version=1, step=step, args=vars(args), config=config, **weights,
                         opt=opt.state_dict(), scaler=scaler.state_dict(), rng=rng), ckpt_path)

    if rank == 0:
        print(f"{args.objective} on {args.dataset}: {n_params / 1e6:.2f}M params, batch {args.batch_size}, "
              f"{args.steps} steps, {world} process(es), {device}, amp {args.amp}, out {out}")
    for m in nets.values():
        m.train()
    sum_loss, sum_reg, n_sum, t0, last_saved = 0.0, 0.0, 0, time.perf_counter(), step
    while step < args.steps:
        loss, reg = train_step(next_batch(), step)
        sum_loss, sum_reg, n_sum, step = sum_loss + loss, sum_reg + reg, n_sum + 1, step + 1
        at_save = step % args.save_every == 0 or step == args.steps
        if step % args.log_every == 0 or at_save:
            sums = torch.stack([sum_loss, sum_reg]) / n_sum
            if world > 1:
                dist.all_reduce(sums)  # every process sees the same loss, so all stop together on a NaN
                sums /= world
            loss, reg = sums.tolist()  # the one host sync per interval
            if not math.isfinite(loss):
                raise SystemExit(f"error: the loss became {loss} between steps {step - n_sum} and {step}; "
                                 f"{ckpt_path} (step {last_saved}) is left intact: lower --lr or use --amp off")
            images_per_s = n_sum * args.batch_size / (time.perf_counter() - t0)
            if rank == 0:
                row = dict(step=step, loss=loss, reg=reg, lr=opt.param_groups[0]["lr"], images_per_s=images_per_s)
                if at_save:
                    row["eval_loss"] = eval_loss()
                    save(step)
                    last_saved = step
                mem = f"  mem {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == "cuda" else ""
                ev = f"  eval {row['eval_loss']:.2f}" if at_save else ""
                print(f"step {step:>7}  loss {loss:9.3f}  reg {reg:.2e}{ev}  {images_per_s:7.1f} img/s{mem}")
                with open(out / "stats.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            sum_loss, sum_reg, n_sum, t0 = 0.0, 0.0, 0, time.perf_counter()
    return finish(world, nets)


def finish(world, nets):
    if world > 1:
        dist.destroy_process_group()
    return nets.get("score_net"), nets.get("encoder")


def peak_bf16_flops(device):
    """Dense bf16 peak of known GPUs (vendor data sheets, per device), or None: the MFU denominator."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12),
                      ("L40S", 362e12), ("4090", 165e12)):
        if key in name:
            return peak
    return None


def count_step_flops(loss_terms, x0):
    """FLOPs of one training step's forward and backward, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        loss, reg = loss_terms(x0)
        (loss + reg).backward()
    return counter.get_total_flops()


if __name__ == "__main__":
    main()
