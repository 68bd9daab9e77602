"""Training-step speed: our U-Net vs lucidrains' denoising-diffusion-pytorch U-Net, side by side.

Both are plain score models trained by the same step (DSM loss with lambda = std^2, AdamW, grad
clip), on the same batch and image size, in one process. The peer's `dim` is picked so its
parameter count is the nearest to ours. The peer is installed for this benchmark only:

    pip install denoising-diffusion-pytorch
    python benchmarks/peer.py --device cpu --batch-size 64 --steps 20
    python benchmarks/peer.py --device cuda --batch-size 256 --steps 50 --ch 32 --num-res-blocks 2

Modes: `eager` (fp32, contiguous, no compile) for both; `optimised` (bf16 autocast and channels_last
on CUDA, fused AdamW, torch.compile) for both. Prints images/s and the ratios.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from runtime import autocast, pick_device  # noqa: E402
from sde import VESDE, dsm_loss  # noqa: E402
from unet import UNet  # noqa: E402


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def time_steps(model, forward, args, device, optimised):
    """images/s of full training steps (forward, loss, backward, clip, AdamW) after warm-up."""
    sde = VESDE()
    fmt = torch.channels_last if optimised and device.type == "cuda" else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    if optimised:
        model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, fused=optimised)
    ctx = autocast(device, "bf16" if optimised else "off")
    x0 = torch.rand(args.batch_size, 1, 28, 28, device=device).contiguous(memory_format=fmt)

    def step():
        t = sde.sample_t(args.batch_size, device=device)
        noise = torch.randn_like(x0)
        std = sde.marginal_std(t)
        with ctx:
            score = forward(model, sde.perturb(x0, t, noise), t, std)
        dsm_loss(score, noise, std).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch_size / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, help="default: cuda, then mps, then cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--ch", type=int, default=16)
    p.add_argument("--ch-mult", default="1,2")
    p.add_argument("--num-res-blocks", type=int, default=1)
    p.add_argument("--modes", default="eager,optimised")
    args = p.parse_args()
    from denoising_diffusion_pytorch import Unet  # the peer, imported only here

    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    mult = tuple(int(m) for m in args.ch_mult.split(","))
    ours = lambda: UNet(ch=args.ch, ch_mult=mult, num_res_blocks=args.num_res_blocks)
    target = n_params(ours())
    dim = min(range(8, 129, 8), key=lambda d: abs(n_params(Unet(dim=d, dim_mults=mult, channels=1)) - target))
    peer = lambda: Unet(dim=dim, dim_mults=mult, channels=1)
    # the peer predicts noise from (x, time); score = -prediction / std, so the loss is the same arithmetic
    forwards = {"ours": lambda m, x, t, std: m(x, t),
                "peer": lambda m, x, t, std: -m(x, t * 1000).float() / std[:, None, None, None]}
    print(f"ours: UNet ch {args.ch} mult {mult} blocks {args.num_res_blocks}, {target / 1e6:.3f}M params; "
          f"peer: Unet dim {dim} mults {mult}, {n_params(peer()) / 1e6:.3f}M params; "
          f"batch {args.batch_size}, 28x28, {device}, {torch.get_num_threads()} threads")
    results = {}
    for mode in args.modes.split(","):
        for name, build in (("ours", ours), ("peer", peer)):
            torch.manual_seed(0)
            results[name, mode] = time_steps(build(), forwards[name], args, device, mode == "optimised")
            print(f"{name:5s} {mode:10s} {results[name, mode]:9.1f} images/s", flush=True)
    for mode in args.modes.split(","):
        print(f"{mode}: ours / peer = {results['ours', mode] / results['peer', mode]:.2f}")
    if ("ours", "eager") in results and ("ours", "optimised") in results:
        print(f"ours optimised / ours eager = {results['ours', 'optimised'] / results['ours', 'eager']:.2f}")


if __name__ == "__main__":
    main()
