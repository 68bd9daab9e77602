"""Training-step speed: our U-Net vs lucidrains' denoising-diffusion-pytorch U-Net, side by side.

Both are plain score models trained by the same step (DSM loss with lambda = std^2, AdamW, grad
clip), on the same batch and image size, in one process. The peer's `dim` is picked so its
parameter count is the nearest to ours. The peer is installed for this benchmark only:

    pip install denoising-diffusion-pytorch
    python benchmarks/peer.py --device cpu --batch-size 64 --steps 20
    python benchmarks/peer.py --device cuda --batch-size 256 --steps 50 --ch 32 --num-res-blocks 2

Modes: `eager` (fp32, contiguous, no compile) for both; `optimised` (bf16 autocast and channels_last
on CUDA, fused AdamW, torch.compile) for both; `graph` (CUDA: the same without compile, the whole step
captured once as a CUDA graph and replayed, as train_drl.py --cuda-graph does) for both. Prints images/s and the ratios. Every (network, mode)
is timed in a child process of its own, killed after --limit seconds (compilation included): a compile
that does not finish says so in its row instead of holding up the rest.
"""
import argparse
import queue
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from runtime import autocast, pick_device  # noqa: E402
from sde import VESDE, dsm_loss, t_uniform  # noqa: E402
from unet import ScoreNet, UNet  # noqa: E402


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def time_steps(model, forward, args, device, mode):
    """images/s of full training steps (forward, loss, backward, clip, AdamW) after warm-up."""
    sde = VESDE()
    optimised = mode != "eager"
    fmt = torch.channels_last if optimised and device.type == "cuda" else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    if mode == "optimised":
        model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, fused=optimised, capturable=mode == "graph")
    ctx = autocast(device, "bf16" if optimised else "off", cache=mode != "graph")
    x0 = torch.rand(args.batch_size, 1, 28, 28, device=device).contiguous(memory_format=fmt)

    def step():
        t = t_uniform(args.batch_size, sde, device)
        noise = torch.randn_like(x0)
        std = sde.marginal_std(t)
        with ctx:
            score = forward(model, sde.perturb(x0, t, noise), t, std)
        dsm_loss(score, noise, std).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if mode == "graph":  # warm up on a side stream, capture the whole step once, then time its replays
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(args.warmup):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        step = graph.replay
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


def _child(fn, fn_args, results):
    results.put(fn(*fn_args))


def limited(fn, fn_args, limit):
    """fn(*fn_args) in a fresh (spawned) process: its result, or None if it fails or is not back in limit s."""
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, fn_args, results), daemon=True)
    proc.start()
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            try:
                return results.get(timeout=0.2)
            except queue.Empty:
                if not proc.is_alive():  # failed (its traceback is on stderr), or its result is still in flight
                    try:
                        return results.get(timeout=1)
                    except queue.Empty:
                        return None
        return None
    finally:
        proc.kill()
        proc.join()


def networks(args):
    """name -> (constructor, forward returning the score) for ours and the peer at the nearest size."""
    from denoising_diffusion_pytorch import Unet  # the peer, imported only here

    mult = tuple(int(m) for m in args.ch_mult.split(","))
    ours = lambda: ScoreNet(UNet(ch=args.ch, ch_mult=mult, num_res_blocks=args.num_res_blocks), VESDE())
    target = n_params(ours())
    dim = min(range(8, 129, 8), key=lambda d: abs(n_params(Unet(dim=d, dim_mults=mult, channels=1)) - target))
    peer = lambda: Unet(dim=dim, dim_mults=mult, channels=1)
    # the peer predicts noise from (x, time); score = -prediction / std, so the loss is the same arithmetic
    return {"ours": (ours, lambda m, x, t, std: m(x, t)),
            "peer": (peer, lambda m, x, t, std: -m(x, t * 1000).float() / std[:, None, None, None])}, dim


def measure(name, mode, args):
    """images/s of one network in one mode (run in a child process by main)."""
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    build, forward = networks(args)[0][name]
    return time_steps(build(), forward, args, device, mode)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, help="default: cuda, then mps, then cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--ch", type=int, default=16)
    p.add_argument("--ch-mult", default="1,2")
    p.add_argument("--num-res-blocks", type=int, default=1)
    p.add_argument("--modes", default="eager,optimised", help="comma list of eager, optimised, graph (CUDA)")
    p.add_argument("--limit", type=float, default=300, help="seconds for each network and mode, compile included")
    args = p.parse_args(argv)
    try:
        import denoising_diffusion_pytorch  # noqa: F401
    except ImportError:
        sys.exit("peer.py needs the peer's package: pip install denoising-diffusion-pytorch")
    nets, dim = networks(args)
    (ours, _), (peer, _) = nets["ours"], nets["peer"]
    print(f"ours: UNet ch {args.ch} mult {args.ch_mult} blocks {args.num_res_blocks}, {n_params(ours()) / 1e6:.3f}M "
          f"params; peer: Unet dim {dim} mults {args.ch_mult}, {n_params(peer()) / 1e6:.3f}M "
          f"params; batch {args.batch_size}, 28x28, {pick_device(args.device)}, {torch.get_num_threads()} threads")
    results = {}
    for mode in args.modes.split(","):
        for name in nets:
            results[name, mode] = limited(measure, (name, mode, args), args.limit)
            print(f"{name:5s} {mode:10s} " + (f"{results[name, mode]:9.1f} images/s" if results[name, mode] else
                                              f"no result (failed, or over --limit {args.limit:g} s)"), flush=True)
    ratio = lambda a, b: f"{results[a] / results[b]:.2f}" if results.get(a) and results.get(b) else "not measured"
    for mode in args.modes.split(","):
        print(f"{mode}: ours / peer = {ratio(('ours', mode), ('peer', mode))}")
    if ("ours", "eager") in results and ("ours", "optimised") in results:
        print(f"ours optimised / ours eager = {ratio(('ours', 'optimised'), ('ours', 'eager'))}")


if __name__ == "__main__":
    main()
