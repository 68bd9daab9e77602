"""How fast a training step runs: `benchmark` (train_drl.py --benchmark N) times a run's own step,
counts its FLOPs and says what bounds it; the FLOP helpers it uses."""
import time

import torch


def benchmark(tr, n_steps):
    """Time n_steps training steps after 5 of warm-up (and compilation); print images/s, FLOPs and MFU,
    and what bounds the step: the step is timed at the batch and at half of it, t(B) = fixed + B * per
    image; a fixed part near the whole step means launches and Python (launch-bound), else the work
    itself (arithmetic or memory: compare the FLOP rate with the device's peak)."""
    args, device = tr.args, tr.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def seconds_per_step(batch):
        tr.batch = batch
        tr.step_fn = tr.make_step_fn()  # --cuda-graph: a new batch size is a new capture, after its warm-up
        for _ in range(5):
            tr.train_step(tr.next_batch())
        sync()
        t0 = time.perf_counter()
        for _ in range(n_steps):
            tr.train_step(tr.next_batch())
        sync()
        return (time.perf_counter() - t0) / n_steps

    full = tr.batch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step, half = seconds_per_step(full), seconds_per_step(max(1, full // 2))
    tr.batch = full
    fixed, bound = what_bounds(step, half)
    ips = full * tr.world / step
    flops = count_step_flops(lambda x0: tr.compute_loss(tr.train_nets, x0), tr.next_batch()) / tr.batch
    n_params = sum(p.numel() for p in tr.params)
    mem = f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == "cuda" else ""
    peak = peak_bf16_flops(device)
    mfu = f", MFU {flops * ips / tr.world / peak:.1%} of {peak / 1e12:.0f} TFLOP/s bf16" if peak else ""
    if tr.rank == 0:
        print(f"benchmark: {args.objective} {n_params / 1e6:.2f}M params, batch {args.batch_size}, "
              f"{tr.world} process(es), amp {args.amp}, compile {args.compile}, {device}: {ips:.1f} images/s, "
              f"{flops / 1e9:.3f} GFLOP/image, {flops * ips / 1e12:.3f} TFLOP/s{mfu}{mem}")
        print(f"bound: {bound}: {1e3 * step:.1f} ms per step at batch {full}, {1e3 * half:.1f} ms at {full // 2}, "
              f"so {1e3 * fixed:.1f} ms fixed ({fixed / step:.0%} of the step) and "
              f"{1e3 * (step - fixed) / full:.3f} ms per image")


def what_bounds(step, half):
    """From the seconds of a step at batch B and at B / 2: the fixed seconds per step (the intercept of the
    line through (B / 2, half) and (B, step)) and what bounds the step: launches and Python when that
    fixed part is over half the step, else the work itself."""
    fixed = max(0.0, 2 * half - step)
    return fixed, ("launch-bound (fixed cost per step)" if fixed > 0.5 * step else "work-bound (arithmetic or memory)")


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


def count_step_flops(loss_fn, x0):
    """FLOPs of one training step's forward and backward, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        loss, reg = loss_fn(x0)
        (loss + reg).backward()
    return counter.get_total_flops()
