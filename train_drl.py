"""Train a DRL model: an encoder E(x_0[, t]) and a score net s(x_t, t, z) by denoising score matching.

TMLR paper, eq. 7 (DRL), eq. 8 (VDRL), eq. 9 (time-conditioned encoder); `--objective score` is
the plain score model s(x_t, t), whose loss cannot fall below the DSM floor of eq. 6. The paper's
baselines (Fig. 4) train the same encoder another way: `ae` (a decoder reconstructs x_0 from z),
`vae` (the same with a probabilistic encoder and the ELBO's KL weight 1) and `simclr_gauss` (SimCLR's
NT-Xent loss, where the only augmentation is additive Gaussian pixel noise).

    python train_drl.py --dataset mnist --preset paper        # the paper's MNIST set-up (GPU-sized)
    python train_drl.py --dataset mnist --preset paper --cuda-graph --compile  # the same, 4.5x faster on CUDA
    python train_drl.py --dataset fashion_mnist               # the laptop preset: 15 minutes on 2 cores
    python train_drl.py --dataset shapes --objective vdrl --latent-dim 2
    python train_drl.py --dataset mnist --benchmark 50        # images/s of the training step
    torchrun --nproc_per_node 4 train_drl.py --dataset mnist  # DistributedDataParallel, same outputs

Writes OUT/ckpt.pt (one dict, `torch.load(p, weights_only=True)`), OUT/config.json and
OUT/stats.jsonl (with the EMA encoder's linear probe at each save, the probe curve). Running the
same command again resumes from OUT/ckpt.pt; Ctrl-C saves first. The flags, the presets and
the networks they build are in train_flags.py.
"""
import os
import signal

if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    # Ctrl-C while torch loads or the data is read: one line, not a 40-line traceback (an exception
    # raised inside torch's own import turns into another one, so the process leaves at once)
    signal.signal(signal.SIGINT, lambda *_: (os.write(2, b"interrupted (Ctrl-C)\n"), os._exit(1)))

import contextlib
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from baselines import autoencoder_loss, simclr_gauss_loss
from checkpoint import CheckpointError, build_nets, read_checkpoint, save_atomic
from codes import encode_images
from data import DataError, data_source, load_dataset
from encoder import reparameterise
from linear_probe import linear_probe, participation_ratio
from runtime import (StopRequest, autocast, drop_rows_after, end_world, exit_on, lock_run_folder, start_world,
                     world_agrees, write_row)
from sde import VESDE, dsm_loss, kl_to_standard_normal
from speed import benchmark
from train_flags import ADDED_LATER, RESUME_MUST_MATCH, net_config, parse_args

EVAL_SEED = 1234  # the eval loss uses the same t and noise at every save and in every run
GRAPH_WARMUP = 3  # --cuda-graph: eager steps before the capture (optimiser state, cuDNN autotuning)


# ---- the objectives: each (networks, sde, x0, args) -> (loss, regulariser), batch means ----

def diffusion_loss(nets, sde, x0, args):
    """DSM loss of the score net given the encoder's code of the clean image: eq. 7 (drl), eq. 8
    (vdrl), eq. 9 (time-conditioned encoder), eq. 4 (score: no encoder, no code)."""
    k = args.noise_per_image  # the score net sees each image (and its one code) at k noise levels
    t, share = sde.sample_t(k * len(x0), args.t_sampling, args.t_fixed, args.t_eps, args.p_mean, args.p_std,
                            x0.device, args.t_uniform_share, args.t_stratified, return_share=True)
    z, mu, logvar = reparameterise(*nets["encoder"](x0, t)) if "encoder" in nets else (None,) * 3
    if k > 1:
        x0, z = x0.repeat(k, 1, 1, 1), z.repeat(k, 1) if z is not None else None
    if args.share_trains == "score-net" and z is not None:  # the uniform share's loss does not reach the encoder
        z = torch.where(share[:, None], z.detach(), z)
    noise = torch.randn_like(x0)
    std = sde.marginal_std(t)
    score = nets["score_net"](sde.perturb(x0, t, noise), t, z)
    loss = dsm_loss(score, noise, std, args.weighting, score_net_of(nets).sigma_data).mean()
    return loss, code_regulariser(z, mu, logvar, args, loss.device)


def code_regulariser(z, mu, logvar, args, device):
    """KL to N(0, I) for a probabilistic code (eq. 8), the L1 penalty for drl's, else 0."""
    if logvar is not None:
        return args.kl * kl_to_standard_normal(mu, logvar).mean()
    if z is not None and args.objective == "drl":
        reg = args.l1 * z.float().abs().sum(1).mean()
        return reg + args.decorr * decorrelation(z.float()) if args.decorr else reg
    return torch.zeros((), device=device)


def decorrelation(z):
    """Mean squared off-diagonal correlation between the code's dimensions over the batch, times D:
    zero when the dimensions are uncorrelated, so the code cannot be near-copies of one direction."""
    zc = (z - z.mean(0)) / (z.std(0) + 1e-4)
    corr = zc.T @ zc / len(z)
    return (corr.square().sum() - corr.diagonal().square().sum()) / z.shape[1]


LOSSES = dict(drl=diffusion_loss, vdrl=diffusion_loss, score=diffusion_loss, ae=autoencoder_loss,
              vae=autoencoder_loss, simclr_gauss=simclr_gauss_loss)


def score_net_of(nets):
    net = nets["score_net"]
    return net.module if isinstance(net, DistributedDataParallel) else net


# ---- the training state and its named pieces ----

class Training:
    """Networks, EMA copies, optimiser, data and RNG of one run, with the step, eval, probe and save."""

    def __init__(self, args, device, rank=0, world=1):
        self.args, self.device, self.rank, self.world = args, device, rank, world
        self.batch = args.batch_size // world
        self.ckpt_path = Path(args.out) / "ckpt.pt"
        # data: the whole set as uint8 on the device; a random batch is one index op
        images, labels = load_dataset(args.dataset, args.data_dir, train=True)
        test_images, test_labels = load_dataset(args.dataset, args.data_dir, train=False)
        sigma_data = (images[:10_000].float() / 255).std().item()  # EDM's sigma_data, measured
        self.images = images.to(device)
        self.eval_x0 = test_images[: args.eval_n].to(device).float() / 255
        n = args.probe_n
        self.probe_data = (images[:n], labels[:n].to(device), test_images[:n], test_labels[:n].to(device))
        self.data_gen = torch.Generator(device=device).manual_seed(args.seed + rank)  # each process its batches
        # channels_last on CUDA and CPU: the cpu preset's step is 1.12-1.19x faster in it on 2 threads (RESULTS.md)
        self.memory_format = torch.channels_last if device.type in ("cuda", "cpu") else torch.contiguous_format
        # networks, EMA copies, optimiser
        self.config = net_config(args, round(sigma_data, 4))
        self.nets = {k: m.to(device, memory_format=self.memory_format) for k, m in build_nets(self.config).items()}
        # the modules the training forward calls: DDP-wrapped (its constructor broadcasts rank 0's weights)
        self.train_nets = ({k: DistributedDataParallel(m) for k, m in self.nets.items()} if world > 1
                           else dict(self.nets))
        self.emas = {k: copy.deepcopy(m).eval().requires_grad_(False) for k, m in self.nets.items()}
        self.params = [p for m in self.nets.values() for p in m.parameters()]
        # one group, or two when the encoder's lr is scaled apart from the score net's (--enc-lr-mult)
        groups = ([dict(params=list(m.parameters()), lr_mult=args.enc_lr_mult if k == "encoder" else 1.0)
                   for k, m in self.nets.items()] if args.enc_lr_mult != 1 else [dict(params=self.params, lr_mult=1.0)])
        self.opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                                     fused=device.type in ("cuda", "cpu"))
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
        self.sde = VESDE(args.sigma_min, args.sigma_max)
        self.loss_fn = LOSSES[args.objective]
        self.step, self.train_seconds, self.progress = 0, 0.0, 0.0
        self.graph, self.eager_steps, self.ema_weight = None, 0, 0.0  # --cuda-graph: the captured step

    def next_batch(self):
        idx = torch.randint(len(self.images), (self.batch,), device=self.device, generator=self.data_gen)
        return (self.images[idx].float() / 255).contiguous(memory_format=self.memory_format)

    def train_step(self, x0):
        """One optimiser step and EMA update; returns the (loss, reg) tensors without a host sync. With
        --cuda-graph the first GRAPH_WARMUP steps run eagerly, then the whole step is captured once and
        replayed: the same arithmetic, one launch instead of hundreds."""
        args = self.args
        lr = self.learning_rate()
        # EMA with TensorFlow's warm-up (num_updates): early averages forget fast, so the EMA copy is
        # not stuck near the random initialisation in a short run
        ema_weight = 1 - min(args.ema, (1 + self.step) / (10 + self.step))
        if self.graph is not None:  # the step's inputs into the tensors the graph reads, then one replay
            for group in self.opt.param_groups:
                group["lr"].fill_(lr * group["lr_mult"])
            self.ema_weight.fill_(ema_weight)
            self.static_x0.copy_(x0)
            self.graph.replay()
            loss, reg = self.static_out
        else:
            for group in self.opt.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)  # a checkpoint from before the flag has none
            self.ema_weight = ema_weight
            with self.graph_warmup():
                loss, reg = self.update(x0)
            if args.cuda_graph and self.eager_steps >= GRAPH_WARMUP:
                self.capture(x0)
        self.step += 1
        return loss.detach(), reg.detach()

    def update(self, x0):
        """Forward, backward, clip, AdamW and EMA: the body of a step, eager or under graph capture."""
        with autocast(self.device, self.args.amp, cache=not self.args.cuda_graph):  # no cached casts in a graph
            loss, reg = self.loss_fn(self.train_nets, self.sde, x0, self.args)
        self.scaler.scale(loss + reg).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.params, self.args.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # (without it each EMA update would add a node to an ever longer autograd chain)
            for k, net in self.nets.items():  # ema += w * (net - ema); w a float, or a tensor in the graph
                ema, params = list(self.emas[k].parameters()), list(net.parameters())
                delta = torch._foreach_sub(params, ema)
                torch._foreach_mul_(delta, self.ema_weight)
                torch._foreach_add_(ema, delta)
                for b_ema, b in zip(self.emas[k].buffers(), net.buffers()):
                    b_ema.copy_(b)
        return loss.detach(), reg.detach()

    @contextlib.contextmanager
    def graph_warmup(self):
        """Eager steps before a capture run on a side stream (PyTorch's recipe for whole-network
        capture: lazy initialisation and cuDNN's autotuning happen there, not inside the graph)."""
        if not self.args.cuda_graph:
            yield
            return
        self.eager_steps += 1
        main, side = torch.cuda.current_stream(self.device), torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            yield
        main.wait_stream(side)

    def capture(self, x0):
        """Record one whole step as a CUDA graph. What changes from step to step lives in tensors the
        graph reads: the batch, each group's lr (AdamW takes a tensor lr when capturable) and the EMA
        weight; t and the noise come from the CUDA generator, whose state a replay advances like eager
        code, so replays draw fresh t and noise."""
        self.static_x0 = x0.clone()
        for group in self.opt.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
            group["capturable"] = True
            group.setdefault("lr_mult", 1.0)
        self.ema_weight = torch.tensor(float(self.ema_weight), device=self.device)
        self.opt.zero_grad(set_to_none=True)  # the graph's backward writes the gradients, never adds to them
        graph = torch.cuda.CUDAGraph()
        # captured on a stream of its own: cuBLAS keeps one workspace per stream, baked into the graph,
        # so graphs captured on torch's shared capture stream race on it when replayed side by side
        with torch.cuda.graph(graph, stream=torch.cuda.Stream(self.device)):
            self.static_out = self.update(self.static_x0)
        self.graph = graph

    def drop_graph(self):
        """Back to eager steps (a new batch size needs a new capture): the next steps warm up again."""
        self.graph, self.eager_steps = None, 0
        for group in self.opt.param_groups:
            group["lr"], group["capturable"] = float(group["lr"]), False
        self.ema_weight = float(self.ema_weight)

    def learning_rate(self):
        """Linear warm-up, then constant or a cosine to zero over the budget: the fraction of --steps
        done, or of --minutes trained when that is further along (`progress`, set by the loop)."""
        args = self.args
        warm = min(1.0, (self.step + 1) / max(1, args.warmup))
        if args.lr_decay == "none" or self.step < args.warmup:
            return args.lr * warm
        done = max(self.progress, (self.step - args.warmup) / max(1, args.steps - args.warmup))
        return args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))

    @torch.no_grad()
    def eval_loss(self):
        """The loss of the EMA nets on fixed test images, t and noise: comparable across runs."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), autocast(self.device, self.args.amp):
            torch.manual_seed(EVAL_SEED)
            total = sum(self.loss_fn(self.emas, self.sde, x0, self.args)[0].item() * len(x0)
                        for x0 in self.eval_x0.split(250))
        return total / len(self.eval_x0)

    @torch.no_grad()
    def probe(self):
        """Linear probe and effective dimension (participation ratio) of the EMA encoder's code."""
        images, labels, test_images, test_labels = self.probe_data
        encoder = self.emas["encoder"]
        t = 0.5 if encoder.time_cond else None
        train = encode_images(encoder, images, t, self.device)
        test = encode_images(encoder, test_images, t, self.device)
        acc, _ = linear_probe(train, labels, test, test_labels)
        return dict(probe_linear=acc, probe_pr=participation_ratio(test))

    def weights_finite(self):
        return all(torch.isfinite(p).all() for m in (*self.nets.values(), *self.emas.values())
                   for p in m.parameters())

    def save(self):
        rng = {"torch": torch.get_rng_state(), "data": self.data_gen.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        state = lambda m: {k: v.detach().cpu() for k, v in m.state_dict().items()} if m is not None else None
        weights = {}
        for k in self.config:  # every slot, None where this run has no such network
            weights[k], weights["ema_" + k] = state(self.nets.get(k)), state(self.emas.get(k))
        # config.json beside the checkpoint says what it holds: written with it, so a run stopped before
        # its first save (a NaN at --lr 100 on top of a good run) never leaves the two disagreeing
        save_atomic(json.dumps(dict(args=vars(self.args), nets=self.config), indent=2),
                    self.ckpt_path.with_name("config.json"))
        save_atomic(dict(kind="drl_train", version=2, step=self.step, train_seconds=self.train_seconds,
                         args=vars(self.args), config=self.config, **weights, opt=self.opt.state_dict(),
                         scaler=self.scaler.state_dict(), rng=rng), self.ckpt_path)

    def resume(self):
        """Continue from ckpt.pt: weights, optimiser, RNG and step, so the run goes on as if unbroken."""
        ckpt = read_checkpoint(self.ckpt_path)
        same = {k: (ckpt["args"].get(k, ADDED_LATER.get(k)), getattr(self.args, k)) for k in RESUME_MUST_MATCH}
        differ = [f"--{k.replace('_', '-')} {new} (saved: {old})" for k, (old, new) in same.items() if old != new]
        # runs saved before a net slot or a constructor option (default None) existed
        present = lambda c: {k: present(v) if isinstance(v, dict) else v for k, v in c.items() if v is not None and v != {}}
        if differ or present(ckpt.get("config", {})) != present(self.config):
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
        self.step, self.train_seconds = ckpt["step"], ckpt.get("train_seconds", 0.0)
        if self.world > 1:  # the saved RNG state is rank 0's: give each process its own stream, new per resume
            seed = (self.args.seed * 1_000_003 + self.step) * 1009 + self.rank
            torch.manual_seed(seed)
            self.data_gen.manual_seed(seed)


def main(argv=None):
    """Train; returns the (score_net, encoder) modules (None where the run has none) for inspection."""
    args = parse_args(argv)
    device, rank, world = start_world(torch.device(args.device), args.batch_size, args.cuda_graph)  # torchrun's, or one
    torch.manual_seed(args.seed + rank)  # different noise and t per process; DDP syncs the weights
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out = Path(args.out)
    with exit_on(DataError, CheckpointError):
        lock = lock_run_folder(out) if rank == 0 and not args.benchmark else None
        tr = Training(args, device, rank, world)
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
        benchmark(tr, args.benchmark)
    else:
        if rank == 0:
            drop_rows_after(out / "stats.jsonl", tr.step)
        try:
            train(tr, out)
        finally:  # however the run ends (a NaN, a second Ctrl-C), the folder is free again
            if lock is not None:
                lock.close()
    end_world(world)
    return tr.nets.get("score_net"), tr.nets.get("encoder")


def train(tr, out):
    """The loop: steps until --steps or --minutes; a log line by step count or every 30 s, with an
    ETA; a checked save (and probe) every --save-every steps, every --save-minutes and at the end."""
    args, rank = tr.args, tr.rank
    budget = args.minutes * 60 if args.minutes else math.inf
    n_params = sum(p.numel() for p in tr.params)
    if rank == 0:
        print(f"{args.objective} on {args.dataset}: {n_params / 1e6:.2f}M params, batch {args.batch_size}, "
              f"{args.steps} steps" + (f" or {args.minutes:g} min" if args.minutes else "")
              + f", {tr.world} process(es), {tr.device}, amp {args.amp}, data {data_source(args.dataset, args.data_dir)}"
              f", out {out}", flush=True)
    stop = StopRequest()
    last_saved = tr.step if tr.ckpt_path.exists() else None
    last_save_time = last_log = time.time()
    sum_loss, sum_reg, n_sum, t0 = 0.0, 0.0, 0, time.perf_counter()
    out_of_time, warned, stopping = tr.train_seconds >= budget, False, False
    try:
        while tr.step < args.steps and not out_of_time:
            loss, reg = tr.train_step(tr.next_batch())
            sum_loss, sum_reg, n_sum = sum_loss + loss, sum_reg + reg, n_sum + 1
            # Time-based decisions (log every 30 s, save every --save-minutes, the --minutes budget) and
            # a stop request are rank 0's, shared so that every DDP process takes the same branch; checked
            # every 10 steps under DDP (a broadcast), every step otherwise (free). The stop request is read
            # once here: a signal that lands later in this iteration (during the log line, the eval or the
            # save) is acted on after the next step, with its own save.
            now, check_time = time.time(), tr.world == 1 or tr.step % 10 == 0
            stopping = check_time and world_agrees(tr.device, tr.world, stop.requested)
            elapsed = tr.train_seconds + time.perf_counter() - t0
            tr.progress = elapsed / budget  # 0 without --minutes: the lr decays by steps alone
            out_of_time = check_time and world_agrees(tr.device, tr.world, elapsed >= budget)
            save_time = check_time and world_agrees(tr.device, tr.world, now - last_save_time > 60 * args.save_minutes)
            log_time = check_time and world_agrees(tr.device, tr.world, now - last_log > 30)
            at_save = (tr.step % args.save_every == 0 or tr.step >= args.steps or stopping
                       or out_of_time or save_time)
            if not (at_save or log_time or tr.step % args.log_every == 0):
                continue
            sums = torch.stack([sum_loss, sum_reg]) / n_sum
            if tr.world > 1:
                dist.all_reduce(sums)  # every process sees the same loss, so all stop together on a NaN
                sums /= tr.world
            loss, reg = sums.tolist()  # the one host sync per interval
            tr.train_seconds += time.perf_counter() - t0
            ips = n_sum * args.batch_size / (time.perf_counter() - t0)
            if not math.isfinite(loss):
                raise SystemExit(nan_message(loss, tr, n_sum, last_saved))
            row = dict(step=tr.step, loss=loss, reg=reg, lr=float(tr.opt.param_groups[0]["lr"]), images_per_s=ips,
                       minutes=tr.train_seconds / 60)
            if rank == 0 and at_save:
                row["eval_loss"] = tr.eval_loss()
                if not (math.isfinite(row["eval_loss"]) and tr.weights_finite()):
                    raise SystemExit(nan_message(row["eval_loss"], tr, n_sum, last_saved, where="weights"))
                if args.probe_n and "encoder" in tr.emas:
                    row.update(tr.probe())
            if rank == 0:
                print(log_line(row, tr, budget), flush=True)
                # the row goes first: a run killed before the checkpoint lands drops it on resume, so
                # stats.jsonl has a row for every saved step
                write_row(out / "stats.jsonl", row)
            if rank == 0 and at_save:
                tr.save()
                last_saved, last_save_time = tr.step, time.time()
                if not warned and tr.device.type == "cpu" and eta_seconds(tr, budget) > 2 * 3600:
                    warned = True
                    print(f"note: this run needs about {eta_seconds(tr, budget) / 3600:.0f} hours on this CPU; "
                          f"--preset cpu trains in 15 minutes, or cap any run with --minutes M", flush=True)
            sum_loss, sum_reg, n_sum, t0, last_log = 0.0, 0.0, 0, time.perf_counter(), time.time()
            if stopping:
                if rank == 0:
                    print(f"stopped at step {tr.step}; {tr.ckpt_path} is saved: run the same command to resume")
                break
    finally:
        stop.restore()
    if rank == 0 and not stopping:
        print(f"done: step {tr.step}, {tr.train_seconds / 60:.1f} min of training; {tr.ckpt_path}")


def eta_seconds(tr, budget):
    per_step = tr.train_seconds / max(1, tr.step)
    return min(budget, (tr.args.steps - tr.step) * per_step + tr.train_seconds) - tr.train_seconds


def log_line(row, tr, budget):
    eta = eta_seconds(tr, budget)
    ev = f"  eval {row['eval_loss']:.2f}" if "eval_loss" in row else ""
    pr = (f"  probe {100 * row['probe_linear']:.1f}% (dim {row['probe_pr']:.1f})" if "probe_linear" in row else "")
    mem = f"  mem {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if tr.device.type == "cuda" else ""
    return (f"step {row['step']:>7}  loss {row['loss']:9.3f}  reg {row['reg']:.2e}{ev}{pr}  "
            f"{row['images_per_s']:7.1f} img/s  {row['minutes']:.1f} min  ETA {eta / 60:.1f} min{mem}")


def nan_message(value, tr, n_sum, last_saved, where="loss"):
    kept = (f"{tr.ckpt_path} (step {last_saved}) is left intact" if last_saved is not None
            else "no checkpoint was written")
    what = "the loss became" if where == "loss" else "the weights or the eval loss became"
    return (f"error: {what} {value} between steps {tr.step - n_sum} and {tr.step}; {kept}: "
            f"lower --lr or use --amp off")


if __name__ == "__main__":
    main()
