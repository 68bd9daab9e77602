"""Train a DRL model: an encoder E(x_0[, t]) and a score net s(x_t, t, z) by denoising score matching.

TMLR paper, eq. 7 (DRL), eq. 8 (VDRL), eq. 9 (time-conditioned encoder); `--objective score` is
the plain score model s(x_t, t), whose loss cannot fall below the DSM floor of eq. 6. The paper's
baselines (Fig. 4) train the same encoder another way: `ae` (a decoder reconstructs x_0 from z),
`vae` (the same with a probabilistic encoder and the ELBO's KL weight 1) and `simclr_gauss` (SimCLR's
NT-Xent loss, where the only augmentation is additive Gaussian pixel noise).

    python train_drl.py --dataset fashion_mnist               # the default (cpu) preset: about 10 minutes on 2 cores
    python train_drl.py --dataset mnist --preset paper        # the paper's MNIST set-up (GPU-sized)
    python train_drl.py --dataset mnist --preset paper --cuda-graph --compile  # the same, 4.5x faster on CUDA
    python train_drl.py --dataset shapes --objective vdrl --latent-dim 2
    python train_drl.py --dataset mnist --benchmark 50        # images/s of the training step
    torchrun --nproc_per_node 4 train_drl.py --dataset mnist  # DistributedDataParallel, same outputs

Writes OUT/ckpt.pt (one dict, `torch.load(p, weights_only=True)`), OUT/config.json and
OUT/stats.jsonl (with the EMA encoder's linear probe at each save, the probe curve). Running the
same command again resumes from OUT/ckpt.pt; Ctrl-C saves first. The flags, the presets and the
networks and loss they build are in train_flags.py; the loss itself is sde.DRLLoss.
"""
if __name__ == "__main__":
    import interrupts
    interrupts.quiet_until_ready()

import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from checkpoint import VERSION, CheckpointError, WriteError, build_nets, read_checkpoint, save_together
from codes import probe_encoder
from data import DataError, data_source, load_dataset
from runtime import (CudaGraphStep, RunFolderLock, StopRequest, autocast, drop_rows_after, end_world, exit_on,
                     memory_line, pick_device, start_world, unwrite_row, world_agrees, write_row)
from speed import benchmark
from train_flags import RESUME_MUST_MATCH, make_loss, net_config, parse_args

GRAD_CLIP = 1.0  # the papers' gradient clipping
SAVE_MINUTES = 10  # a save at least this often, whatever --save-every says
EVAL_SEED = 1234  # the eval loss: the same t and noise at every save and in every run


class Training:
    """One run: its data, networks, EMA copies, optimiser and loss (built from the flags), the step, and the
    eval, save and resume around it."""

    def __init__(self, args, out, device, rank=0, world=1):
        self.args, self.device, self.rank, self.world = args, device, rank, world
        self.batch = args.batch_size // world
        self.ckpt_path = Path(out) / "ckpt.pt"
        # data: the whole set as uint8 on the device; a random batch is one index op
        images, labels = load_dataset(args.dataset, args.data_dir, train=True, classes=args.classes)
        if args.batch_size > len(images):
            raise DataError(f"--batch-size {args.batch_size} is more than the {len(images)} training images; lower it")
        test_images, test_labels = load_dataset(args.dataset, args.data_dir, train=False, classes=args.classes)
        sigma_data = round((images[:10_000].float() / 255).std().item(), 4)  # EDM's sigma_data, measured
        self.images = images.to(device)
        self.eval_x0 = test_images[: args.eval_n].to(device).float() / 255
        n = args.probe_n
        self.probe_data = (images[:n], labels[:n].to(device), test_images[:n], test_labels[:n].to(device))
        self.data_gen = torch.Generator(device=device).manual_seed(args.seed + rank)  # each process its batches
        # channels_last on CUDA and CPU: the cpu preset's step is 1.13x faster in it on 2 threads (RESULTS.md)
        self.memory_format = torch.channels_last if device.type in ("cuda", "cpu") else torch.contiguous_format
        # networks, EMA copies, optimiser (the encoder's lr is --enc-lr-mult times the others')
        self.config = net_config(args, sigma_data)
        self.nets = {k: m.to(device, memory_format=self.memory_format) for k, m in build_nets(self.config).items()}
        # the modules the training forward calls: DDP-wrapped (its constructor broadcasts rank 0's weights)
        self.train_nets = {k: DistributedDataParallel(m) if world > 1 else m for k, m in self.nets.items()}
        self.emas = {k: copy.deepcopy(m).eval().requires_grad_(False) for k, m in self.nets.items()}
        self.params = [p for m in self.nets.values() for p in m.parameters()]
        groups = [dict(params=list(m.parameters()), lr_mult=args.enc_lr_mult if k == "encoder" else 1.0)
                  for k, m in self.nets.items()]
        self.opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                                     fused=device.type in ("cuda", "cpu"))
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16" and device.type == "cuda")
        self.loss = make_loss(args, sigma_data)  # sde.DRLLoss, or a baseline's loss (baselines.py)
        self.step, self.train_seconds = 0, 0.0
        self.step_fn = self.make_step_fn()

    def next_batch(self):
        idx = torch.randint(len(self.images), (self.batch,), device=self.device, generator=self.data_gen)
        return (self.images[idx].float() / 255).contiguous(memory_format=self.memory_format)

    def compute_loss(self, nets, x0):
        """(loss, regulariser): DRLLoss(encoder, score_net, x0) (encoder None for the plain score model), or
        the baselines' AutoencoderLoss(encoder, decoder, x0) and SimCLRGaussLoss(encoder, projector, x0)."""
        second = next(nets[k] for k in ("score_net", "decoder", "projector") if k in nets)
        return self.loss(nets.get("encoder"), second, x0)

    # ---- the step ----

    def train_step(self, x0):
        """One step at this step's learning rate and EMA weight (TensorFlow's warm-up: early averages forget
        fast, so a short run's EMA copy is not stuck near its initialisation)."""
        ema_weight = 1 - min(self.args.ema, (1 + self.step) / (10 + self.step))
        loss, reg = self.step_fn(x0, self.learning_rate(), ema_weight)
        self.step += 1
        return loss, reg

    def learning_rate(self):
        """Linear warm-up, then constant."""
        return self.args.lr * min(1.0, (self.step + 1) / max(1, self.args.warmup))

    def update(self, x0, lr, ema_weight):
        """Forward, backward, clip, AdamW, EMA; returns the (loss, reg) tensors without a host sync.
        lr and ema_weight are floats, or tensors that a CUDA graph reads (runtime.CudaGraphStep)."""
        for group in self.opt.param_groups:
            group["lr"] = lr * group["lr_mult"]
        with autocast(self.device, self.args.amp, cache=not self.args.cuda_graph):  # no cached casts in a graph
            loss, reg = self.compute_loss(self.train_nets, x0)
        self.scaler.scale(loss + reg).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.params, GRAD_CLIP)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # ema += w * (net - ema); under autograd each update would chain a node onto it
            for k, net in self.nets.items():
                ema, params = list(self.emas[k].parameters()), list(net.parameters())
                delta = torch._foreach_sub(params, ema)
                torch._foreach_mul_(delta, ema_weight)
                torch._foreach_add_(ema, delta)
                for b_ema, b in zip(self.emas[k].buffers(), net.buffers()):
                    b_ema.copy_(b)
        return loss.detach(), reg.detach()

    def make_step_fn(self):
        """The eager step, or with --cuda-graph the same step captured once and replayed (one launch)."""
        return CudaGraphStep(self.update, self.device, self.opt) if self.args.cuda_graph else self.update

    # ---- around the step ----

    @torch.no_grad()
    def eval_loss(self):
        """The loss of the EMA nets on fixed test images, t and noise: comparable across runs."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), autocast(self.device, self.args.amp):
            torch.manual_seed(EVAL_SEED)
            total = sum(self.compute_loss(self.emas, x0)[0].item() * len(x0) for x0 in self.eval_x0.split(250))
        return total / len(self.eval_x0)

    def checked_eval(self, n_sum, last_saved):
        """At a save: the eval loss and the linear probe, after checking that the weights are finite."""
        row = dict(eval_loss=self.eval_loss())
        weights = (p for m in (*self.nets.values(), *self.emas.values()) for p in m.parameters())
        if not (math.isfinite(row["eval_loss"]) and all(torch.isfinite(p).all() for p in weights)):
            raise SystemExit(nan_message(row["eval_loss"], self, n_sum, last_saved, where="weights"))
        if self.args.probe_n and "encoder" in self.emas:
            row.update(probe_encoder(self.emas["encoder"], *self.probe_data, self.device))
        return row

    def save(self):
        """ckpt.pt and config.json together, whole or not at all (a full disk leaves both as they were)."""
        rng = {"torch": torch.get_rng_state(), "data": self.data_gen.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        weights = {}
        for k in self.config:  # every slot, None where this run has no such network
            for name, nets in ((k, self.nets), ("ema_" + k, self.emas)):
                weights[name] = {n: v.detach().cpu() for n, v in nets[k].state_dict().items()} if k in nets else None
        ckpt = dict(kind="drl_train", version=VERSION, step=self.step, train_seconds=self.train_seconds,
                    args=vars(self.args), config=self.config, **weights, opt=self.opt.state_dict(),
                    scaler=self.scaler.state_dict(), rng=rng)
        config = json.dumps(dict(args=vars(self.args), nets=self.config), indent=2)
        save_together({self.ckpt_path: ckpt, self.ckpt_path.with_name("config.json"): config})

    def resume(self):
        """Continue from ckpt.pt: weights, optimiser, RNG and step, so the run goes on as if unbroken."""
        ckpt = read_checkpoint(self.ckpt_path)
        if ckpt.get("weights_only"):
            raise CheckpointError(f"{self.ckpt_path} holds a run's EMA weights alone (exported by checkpoint.py): it "
                                  f"cannot be resumed; pass another --out")
        differ = [f"--{k.replace('_', '-')} {getattr(self.args, k)} (saved: {ckpt['args'][k]})"
                  for k in RESUME_MUST_MATCH if ckpt["args"][k] != getattr(self.args, k)]
        if differ or ckpt["config"] != self.config:
            what = ", ".join(differ) if differ else "the networks differ"
            raise CheckpointError(f"{self.ckpt_path} holds another run ({what}); pass the flags it was trained "
                                  f"with (see {self.ckpt_path.parent}/config.json) or another --out")
        for k in self.nets:
            self.nets[k].load_state_dict(ckpt[k])
            self.emas[k].load_state_dict(ckpt["ema_" + k])
        self.opt.load_state_dict(ckpt["opt"])
        for group in self.opt.param_groups:  # a --cuda-graph run saves tensor lrs; the eager step sets floats
            group["lr"], group["capturable"] = float(group["lr"]), False
        self.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.data_gen.set_state(ckpt["rng"]["data"])
        if self.device.type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
        self.step, self.train_seconds = ckpt["step"], ckpt["train_seconds"]
        if self.world > 1:  # the saved RNG state is rank 0's: give each process its own stream, new per resume
            seed = ((self.args.seed * 1_000_003 + self.step) * 1009 + self.rank) % 2 ** 63
            torch.manual_seed(seed)
            self.data_gen.manual_seed(seed)


# ---- the loop ----

def train(tr, out):
    """Steps until --steps or --minutes; a log line (and a stats.jsonl row) every --log-every steps or 30 s,
    with an ETA; a checked save (eval loss, probe) every --save-every steps, every 10 minutes and at the end."""
    args, rank = tr.args, tr.rank
    budget = args.minutes * 60 if args.minutes else math.inf
    if rank == 0:
        print(f"{args.objective} on {args.dataset}: {sum(p.numel() for p in tr.params) / 1e6:.2f}M params, batch "
              f"{args.batch_size}, {args.steps} steps" + (f" or {args.minutes:g} min" if args.minutes else "")
              + f", {tr.world} process(es), {tr.device}" + (f", amp {args.amp}" if tr.device.type == "cuda" else "")
              + f", data {data_source(args.dataset, args.data_dir)}, out {out}", flush=True)
    stop, last_saved, warned = StopRequest(), tr.step if tr.ckpt_path.exists() else None, False
    last_save_time = last_log = time.time()
    sums, n_sum, t0 = 0.0, 0, time.perf_counter()
    out_of_time, stopping = tr.train_seconds >= budget, False
    try:
        while tr.step < args.steps and not out_of_time:
            sums, n_sum = sums + torch.stack(tr.train_step(tr.next_batch())), n_sum + 1
            # Time and a stop request are rank 0's to judge, shared so that every DDP process takes the same
            # branch: every step in one process (free), every 10 steps under DDP (a broadcast). A signal that
            # lands later in this iteration (the log line, the eval, the save) acts after the next step.
            now, elapsed = time.time(), tr.train_seconds + time.perf_counter() - t0
            stopping, out_of_time, save_time, log_time = world_agrees(
                tr.device, tr.world, stop.requested, elapsed >= budget, now - last_save_time > 60 * SAVE_MINUTES,
                now - last_log > 30) if tr.world == 1 or tr.step % 10 == 0 else (False,) * 4
            at_save = tr.step % args.save_every == 0 or tr.step >= args.steps or stopping or out_of_time or save_time
            if not (at_save or log_time or tr.step % args.log_every == 0):
                continue
            row = interval_row(tr, sums, n_sum, t0, last_saved)
            if rank == 0:
                if at_save:
                    row.update(tr.checked_eval(n_sum, last_saved))
                print(log_line(row, tr, budget), flush=True)
                # the row goes first: a run killed before the checkpoint lands drops it on resume, and a
                # save that fails takes it back, so stats.jsonl ends at the checkpoint's step
                before = write_row(out / "stats.jsonl", row)
                if at_save:
                    try:
                        tr.save()
                    except WriteError:
                        unwrite_row(out / "stats.jsonl", before)
                        raise
                    last_saved, last_save_time = tr.step, time.time()
                    if not warned and tr.device.type == "cpu" and eta_seconds(tr, budget) > 2 * 3600:
                        warned = True
                        print(f"note: this run needs about {eta_seconds(tr, budget) / 3600:.0f} hours on this CPU; --preset "
                              f"cpu trains in about 10 minutes on 2 cores, or cap any run with --minutes M", flush=True)
            sums, n_sum, t0, last_log = 0.0, 0, time.perf_counter(), time.time()
            if stopping:
                if rank == 0:
                    print(f"stopped at step {tr.step}; {tr.ckpt_path} is saved: run the same command to resume")
                break
    finally:
        stop.restore()
    if rank == 0 and not stopping:
        print(f"done: step {tr.step}, {tr.train_seconds / 60:.1f} min of training; {tr.ckpt_path}")


def interval_row(tr, sums, n_sum, t0, last_saved):
    """The stats row of the steps since the last one: mean loss and regulariser over every process (the one
    host sync per interval; all processes stop together on a NaN), lr, images/s and minutes trained."""
    sums = sums / n_sum
    if tr.world > 1:
        dist.all_reduce(sums)
        sums /= tr.world
    loss, reg = sums.tolist()
    seconds = time.perf_counter() - t0
    tr.train_seconds += seconds
    if not math.isfinite(loss):
        raise SystemExit(nan_message(loss, tr, n_sum, last_saved))
    return dict(step=tr.step, loss=loss, reg=reg, lr=float(tr.opt.param_groups[0]["lr"]),
                images_per_s=n_sum * tr.args.batch_size / seconds, minutes=tr.train_seconds / 60)


def log_line(row, tr, budget):
    ev = f"  eval {row['eval_loss']:.2f}" if "eval_loss" in row else ""
    pr = (f"  probe {100 * row['probe_linear']:.1f}% (dim {row['probe_pr']:.1f})" if "probe_linear" in row else "")
    mem = f"  mem {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if tr.device.type == "cuda" else ""
    eta = eta_seconds(tr, budget) / 60
    return (f"step {row['step']:>7}  loss {row['loss']:9.3f}  reg {row['reg']:.2e}{ev}{pr}  "
            f"{row['images_per_s']:7.1f} img/s  {row['minutes']:.1f} min  ETA {eta:.1f} min{mem}")


def eta_seconds(tr, budget):
    per_step = tr.train_seconds / max(1, tr.step)
    return min(budget, (tr.args.steps - tr.step) * per_step + tr.train_seconds) - tr.train_seconds


def nan_message(value, tr, n_sum, last_saved, where="loss"):
    kept = (f"{tr.ckpt_path} (step {last_saved}) is left intact" if last_saved is not None
            else "no checkpoint was written")
    what = "the loss became" if where == "loss" else "the weights or the eval loss became"
    fix = "lower --lr or use --amp off" if tr.device.type == "cuda" and tr.args.amp != "off" else "lower --lr"
    return f"error: {what} {value} between steps {tr.step - n_sum} and {tr.step}; {kept}: {fix}"


# ---- the stage ----

def main(argv=None):
    """Train; returns the (score_net, encoder) modules (None where the run has none) for inspection."""
    args = parse_args(argv)
    out = Path(args.out or f"runs/{args.dataset}-{args.objective}" + ("-tc" if args.time_cond else ""))
    with exit_on(ValueError):
        device = pick_device(args.device)
    if args.cuda_graph and device.type != "cuda":
        raise SystemExit(f"error: --cuda-graph needs a CUDA device (this run uses {device}); leave the flag out")
    device, rank, world = start_world(device, args.batch_size, args.cuda_graph)  # torchrun's, or one process
    torch.manual_seed(args.seed + rank)  # different noise and t per process; DDP syncs the weights
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    with exit_on(DataError, CheckpointError):
        tr = Training(args, out, device, rank, world)
    lock = RunFolderLock(out) if rank == 0 and not args.benchmark else None  # once the data and flags are good
    try:
        with exit_on(CheckpointError):
            if tr.ckpt_path.exists() and not args.benchmark:
                tr.resume()
                if rank == 0:
                    print(f"resuming {tr.ckpt_path} from step {tr.step} ({tr.train_seconds / 60:.1f} min trained)")
        if args.compile:  # in place: state_dict keys stay free of compile prefixes; EMA copies stay eager
            for m in tr.nets.values():
                m.compile()
        for m in tr.nets.values():
            m.train()
        if args.benchmark:
            with memory_line("--batch-size"):
                benchmark(tr, args.benchmark)
        else:
            with exit_on(WriteError):
                if rank == 0:
                    drop_rows_after(out / "stats.jsonl", tr.step)
                    if tr.step and not (out / "config.json").exists():  # deleted: the checkpoint says it all
                        tr.save()
                with memory_line("--batch-size"):
                    train(tr, out)
    finally:  # however the run ends (a NaN, a second Ctrl-C), the folder is free again
        if lock is not None:
            lock.release()
    end_world(world)
    return tr.nets.get("score_net"), tr.nets.get("encoder")


if __name__ == "__main__":
    main()
