"""Where the stages run: the device and its autocast, one-line errors, checked flags and folders,
stopping on a signal, one run per folder, its stats rows, torchrun's processes. Imports no network.

    device = pick_device(args.device)          # cuda, then mps, then cpu; a clear error if absent
    with autocast(device, "bf16"): ...          # bf16 on CUDA, a no-op where it does not pay
    with exit_on(DataError, CheckpointError):   # bad input the user can fix -> `error: ...`, exit 1
    check_numbers(parser, args, positive=("steps",))  # argparse-style line for a bad number
    out = prepare_out(args.out)                 # the output folder exists and is writable before any work
    lock = RunFolderLock(out)                   # one run per folder
    step_fn = CudaGraphStep(update, device, opt)  # a training step captured once, replayed after
"""
import argparse
import atexit
import fcntl
import json
import math
import os
import signal
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

import interrupts


def pick_device(name=None):
    """torch.device(name), or the best one here (cuda, then mps, then cpu). Raises ValueError with a
    one-line fix when the named device does not exist on this machine."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: use cpu, cuda or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA GPU; use --device cpu (or leave it out)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here; use --device cpu (or leave it out)")
    return device


def autocast(device, amp="bf16", cache=True):
    """The mixed-precision context of a forward pass: bf16 (or fp16) autocast on CUDA; on other
    devices, and with amp "off", full float32 (CPU autocast is slower for these small convolutions).
    cache=False inside a CUDA graph capture (PyTorch: cached casts must not outlive the capture)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return (torch.autocast(device.type, dtype=dtype, cache_enabled=cache) if dtype and device.type == "cuda"
            else nullcontext())


MADE_FOLDERS = []  # folders this process created on the way to an --out (prepare_out), parents first
TEMP_FILES = set()  # temporary files this process is writing (checkpoint.save_together)
CACHE_FILES = set()  # cache files this process wrote (codes.cached_codes): a stage stopped by a signal takes them back


def clean_up(interrupted=False):
    """What a stage leaves when it fails or is stopped: none of its temporary files (nor, stopped by Ctrl-C or
    SIGTERM, the caches it wrote), and none of the folders it made that are then empty. Runs at exit (an
    error, a traceback) and on Ctrl-C / SIGTERM."""
    for f in list(TEMP_FILES) + (list(CACHE_FILES) if interrupted else []):
        Path(f).unlink(missing_ok=True)
    for folder in reversed(MADE_FOLDERS):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


atexit.register(clean_up)
interrupts.CLEANUPS.append(lambda: clean_up(interrupted=True))


@contextmanager
def exit_on(*errors):
    """Turn the given exceptions (bad input the user can fix, a full disk; their message says how) into a
    one-line `error: MESSAGE` exit instead of a traceback, leaving no empty output folder behind."""
    try:
        yield
    except errors as e:
        clean_up()
        raise SystemExit(f"error: {e}") from None


SEED_MAX = 2 ** 63 - 1  # what every seed of torch.manual_seed and torch.Generator takes


@contextmanager
def memory_line(flag):
    """Running out of memory (CUDA's, or the CPU allocator's) as one line that names the flag to lower."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if not isinstance(e, (torch.OutOfMemoryError, MemoryError)) and "allocate" not in str(e):
            raise
        clean_up()
        raise SystemExit(f"error: out of memory ({type(e).__name__}); lower {flag}") from None


def check_numbers(parser, args, positive=(), non_negative=(), in_unit=()):
    """argparse-style one-line errors for numeric flags: `positive` > 0, `non_negative` >= 0, `in_unit`
    in (0, 1], and --seed (--label-seed) in [0, 2^63 - 1]; NaN and infinity fail every check. Flags left at
    None are skipped."""
    rules = [(positive, lambda v: v > 0, "a positive number"), (non_negative, lambda v: v >= 0, "zero or positive"),
             (in_unit, lambda v: 0 < v <= 1, "in (0, 1]"),
             ([n for n in ("seed", "label_seed") if hasattr(args, n)], lambda v: 0 <= v <= SEED_MAX,
              f"a whole number from 0 to {SEED_MAX} (2^63 - 1)")]
    for names, ok, what in rules:
        for name in names:
            value = getattr(args, name)
            if value is not None and not (math.isfinite(value) and ok(value)):
                parser.error(f"--{name.replace('_', '-')} must be {what}, not {value}")


def prepare_out(path):
    """Create the output folder before any work, or fail at once with one line (not after minutes of work)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SystemExit(f"error: --out {path} is a file; pass a folder")
    try:
        if not path.exists():
            new = [p for p in (path, *path.parents) if not p.exists()][::-1]  # every folder made, parents first
            path.mkdir(parents=True)
            MADE_FOLDERS.extend(new)
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"error: cannot write to --out {path} ({e.strerror}); pass another folder") from None
    return path


def int_list(text):
    """argparse type of a comma list of whole numbers, e.g. --classes 0,1,2 (spaces allowed)."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma list of whole numbers, e.g. 0,1,2; not {text!r}") from None


def float_list(parser, text, flag, lo=-math.inf, hi=math.inf):
    """A comma list of numbers in [lo, hi], e.g. --ts 0,0.5,1, or one argparse-style error line."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        parser.error(f"{flag} must be a comma list of numbers, e.g. 0,0.5,1; not {text!r}")
    if not all(lo <= v <= hi for v in values):
        parser.error(f"{flag} values must lie in [{lo:g}, {hi:g}], not {text}")
    return values


class StopRequest:
    """SIGINT/SIGTERM: the first asks the loop to save and exit after the current step; a second
    Ctrl-C exits at once."""

    def __init__(self):
        self.requested = False
        self.old = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def handle(self, signum, frame):
        if self.requested:
            raise SystemExit(f"{signal.Signals(signum).name} again: quitting without saving; the last save is kept")
        self.requested = True
        name = signal.Signals(signum).name
        print(f"\n{name}: saving after this step ({name} again to quit at once)", flush=True)

    def restore(self):
        for s, handler in self.old.items():
            signal.signal(s, handler)


TMP_SUFFIX = ".drl-tmp"  # the temporary files this codebase writes: NAME.PID.drl-tmp, renamed over NAME when whole


def temp_path(path):
    """The temporary file beside path that this process writes before renaming it over path."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")


def remove_stale_temps(folder):
    """Remove the temporary files in folder that a process of this codebase left when it was killed while
    writing (NAME.PID.drl-tmp whose PID no longer runs); any other file, a user's `notes.tmp` too, stays."""
    for f in Path(folder).glob(f"*{TMP_SUFFIX}"):
        pid = f.name[: -len(TMP_SUFFIX)].rsplit(".", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            f.unlink(missing_ok=True)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


class RunFolderLock:
    """Holds a lock on the run folder itself (flock on the folder, no lock file) for this process's
    life; a second run into the same folder is refused. The operating system releases the lock when the
    process dies, so a killed run never leaves it stuck. `release` also removes the folders this run
    made on the way to it (the folder too) where it left nothing in them."""

    def __init__(self, out):
        out = Path(out)
        self.out = prepare_out(out)
        self.fd = os.open(self.out, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise SystemExit(f"error: {out} is in use by another train_drl.py run; wait for it or pass another --out")
        remove_stale_temps(self.out)  # left by a run killed while writing

    def release(self):
        os.close(self.fd)
        clean_up()


class CudaGraphStep:
    """A step function `step(x, *scalars) -> outputs` run as one CUDA graph: `warmup` eager calls on a side
    stream (lazy initialisation and cuDNN's autotuning happen there, not inside the graph; PyTorch's recipe
    for whole-network capture), then one capture, then replays. The input and the float scalars (a learning
    rate, an EMA weight) are copied into tensors the graph reads; the optimiser is made capturable (its
    step reads tensors, not host floats) before the capture, and the graph's backward writes the gradients
    afresh. Random numbers come from the CUDA generator, whose state a replay advances like eager code, so
    replays draw fresh noise."""

    def __init__(self, step, device, optimizer, warmup=3):
        self.step, self.device, self.optimizer, self.warmup = step, device, optimizer, warmup
        self.graph, self.calls = None, 0

    def __call__(self, x, *scalars):
        if self.graph is not None:
            self.static_x.copy_(x)
            for static, value in zip(self.static_scalars, scalars):
                static.fill_(value)
            self.graph.replay()
            return self.static_out
        main, side = torch.cuda.current_stream(self.device), torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = self.step(x, *scalars)
        main.wait_stream(side)
        self.calls += 1
        if self.calls >= self.warmup:
            self.capture(x, scalars)
        return out

    def capture(self, x, scalars):
        self.static_x = x.clone()
        self.static_scalars = [torch.tensor(float(v), device=self.device) for v in scalars]
        for group in self.optimizer.param_groups:
            group["capturable"] = True
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        # captured on a stream of its own: cuBLAS keeps one workspace per stream, baked into the graph,
        # so graphs captured on torch's shared capture stream race on it when replayed side by side
        with torch.cuda.graph(graph, stream=torch.cuda.Stream(self.device)):
            self.static_out = self.step(self.static_x, *self.static_scalars)
        self.graph = graph


class WriteError(Exception):
    """A file that could not be written (a full disk, say); the old file, if any, is left as it was."""


def write_row(path, row):
    """Append one JSON line whole or not at all; returns the file's size before it, to take it back with
    `unwrite_row`. A failed write (a full disk) is taken back and raises WriteError."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        unwrite_row(path, size)
        raise WriteError(f"cannot write {path} ({e.strerror}); make room, then run the same command again to "
                         f"resume from the last save") from None
    return size


def unwrite_row(path, size):
    """Cut the file back to `size` bytes (no space needed); a file cut to nothing goes."""
    if size:
        os.truncate(path, size)
    else:
        Path(path).unlink(missing_ok=True)


def drop_rows_after(path, step):
    """stats.jsonl of a resumed run: rows past the checkpoint's step were lost with the run, drop them. A
    torn last row (what a kill during a write leaves) is cut off; other damage raises WriteError naming the file."""
    path = Path(path)
    if not path.exists():
        return
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        rows = []
        for i, line in enumerate(lines):
            try:
                row = json.loads(line)
                keep = row["step"] <= step
            except (ValueError, KeyError, TypeError):
                if i == len(lines) - 1:  # torn: the run was killed while writing it
                    break
                raise WriteError(f"{path}: line {i + 1} is not a stats row ({line[:40]!r}); remove that line (or the "
                                 f"file, losing the log), then run the same command again") from None
            if keep:
                rows.append(line)
        path.write_text("".join(r + "\n" for r in rows))
    except (OSError, UnicodeDecodeError) as e:
        raise WriteError(f"{path} cannot be read or rewritten ({getattr(e, 'strerror', None) or type(e).__name__}); "
                         f"move it away, then run the same command again") from None


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help shows each flag's default where it has one (not after a required flag, not "None") and keeps
    the description's and epilog's lines as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required or action.default in (None, argparse.SUPPRESS) or "%(default)" in text:
            return text
        if action.option_strings and action.nargs != 0 or isinstance(action.default, bool):
            return text + " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """argparse whose error is one line (the usage block is what --help is for), and whose --help shows
    the defaults (HelpFormatter)."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def start_world(device, batch_size, cuda_graph):
    """torchrun's processes (DistributedDataParallel): each owns one GPU (or a CPU share) and a 1/world
    share of the batch. Returns (device, rank, world); one process without torchrun."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if batch_size % world:
            raise SystemExit(f"error: --batch-size {batch_size} does not split over {world} processes")
        if cuda_graph:
            raise SystemExit("error: --cuda-graph runs in one process (DDP's gradient hooks are not captured); "
                             "leave the flag out under torchrun")
    return device, rank, world


def world_agrees(device, world, *flags):
    """Decisions taken by rank 0 (time, a stop request) and shared in one broadcast, so that every DDP
    process acts on them alike."""
    if world == 1:
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.broadcast(t, 0)
    return tuple(bool(v) for v in t.tolist())


def end_world(world):
    if world > 1:
        dist.destroy_process_group()
