"""The checkpoint format: one writer, one loader, one error. Every stage reads a run through here.

A train_drl.py checkpoint is one dict of plain tensors and primitives (`torch.load(p,
weights_only=True)` reads it): kind "drl_train", step, args, config (each network's constructor
arguments), the networks and their EMA copies, the optimiser, the AMP scaler and the RNG states.
`load_run` rebuilds the networks from config, so no stage asks for architecture flags again. The
downstream stages' codes are encoded here too, and cached per (checkpoint, t, images).
"""
import io
import json
import os
import shutil
import warnings
from pathlib import Path

import torch

from baselines import Decoder, Projector
from encoder import Encoder
from runtime import TEMP_FILES, WriteError, temp_path
from sde import VESDE
from unet import ScoreNet, UNet

VERSION = 3  # 3: the U-Net takes log sigma and ScoreNet preconditions it (weights under score_net.net.*)


def build_score_net(sigma_min, sigma_max, sigma_data, precond, **unet):
    """The score net of a run: its U-Net wrapped in the preconditioning of the run's VE SDE."""
    return ScoreNet(UNet(**unet), VESDE(sigma_min, sigma_max), sigma_data, precond)


NETS = {"score_net": build_score_net, "encoder": Encoder, "decoder": Decoder, "projector": Projector}


class CheckpointError(Exception):
    """A checkpoint that cannot be used for what was asked; its message says what to pass instead."""


def save_atomic(obj, path):
    """Write obj to path whole or not at all: bytes as they are, a str as text, anything else with
    torch.save. See save_together."""
    save_together({path: obj})


def save_together(files):
    """Write several files {path: obj} so that either all are replaced or none is: each goes to a
    temporary file beside its path (named for this process, so two writers never share one), and only
    when every one is written are they renamed over the old ones (a rename needs no space). A failure
    raises WriteError naming the file, the space it needs and the space that is free."""
    staged = []
    try:
        for path, obj in files.items():
            path = Path(path)
            data = obj.encode() if isinstance(obj, str) else obj if isinstance(obj, bytes) else to_bytes(obj)
            tmp = temp_path(path)
            staged.append((tmp, path))
            TEMP_FILES.add(tmp)
            free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0  # before the attempt
            try:
                tmp.write_bytes(data)
            except OSError as e:
                raise WriteError(f"cannot write {path} ({e.strerror}): it needs {megabytes(len(data))} and "
                                 f"{megabytes(free)} are free there; make room or pass another folder, then run "
                                 f"the same command again") from None
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
            TEMP_FILES.discard(tmp)


def save_figure(fig, path, dpi=120):
    """A matplotlib figure as a PNG file, written whole or not at all."""
    save_atomic(png_bytes(fig, dpi), path)


def png_bytes(fig, dpi=120):
    """A matplotlib figure as PNG bytes (for save_together with the numbers it shows)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def to_bytes(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def megabytes(n):
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def default_ch_mult(image_size):
    """Channel multipliers per resolution when none are given: two resolutions at 28 px, three at 32."""
    return [1, 2] if image_size == 28 else [1, 2, 2]


def encoder_config(in_ch, image_size, ch, latent_dim, ch_mult=None, num_res_blocks=1, **extra):
    """The encoder's constructor arguments, as train_drl.py builds them (and semisup.py without a run)."""
    return dict(in_ch=in_ch, image_size=image_size, ch=ch, latent_dim=latent_dim,
                ch_mult=list(ch_mult or default_ch_mult(image_size)), num_res_blocks=num_res_blocks, **extra)


def build_nets(config):
    """Rebuild the run's networks from the constructor arguments stored in its checkpoint: a dict
    name -> module holding those of score_net, encoder, decoder, projector the run has."""
    return {name: cls(**config[name]) for name, cls in NETS.items() if config.get(name)}


def read_checkpoint(path):
    """The checkpoint dict of a train_drl.py run, on the CPU. Raises CheckpointError on a missing,
    truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; train one with `python train_drl.py --out RUN`, "
                              f"then pass RUN/ckpt.pt")
    try:
        with warnings.catch_warnings():  # torch warns of a plain pickle before failing on it: the error says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: truncated or foreign?); "
                              f"pass a ckpt.pt written by train_drl.py, or delete it to start afresh") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "drl_train":
        raise CheckpointError(f"{path}: not a train_drl.py checkpoint; pass RUN/ckpt.pt from train_drl.py")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: written by an older train_drl.py (checkpoint version {ckpt.get('version')}, "
                              f"this code reads {VERSION}); train it again, or check out the commit that wrote it")
    config = ckpt.get("config")
    needed = ["args", "config", "step"] + [f"ema_{k}" for k in NETS if isinstance(config, dict) and config.get(k)]
    missing = [k for k in needed if not isinstance(ckpt.get(k), dict if k != "step" else int)]
    if missing or not isinstance(config, dict):
        raise CheckpointError(f"{path}: a damaged checkpoint (no {', '.join(missing or ['config'])}); pass a ckpt.pt "
                              f"written by train_drl.py, or delete it to start afresh")
    return ckpt


def export_ema(src, dst):
    """The EMA networks of a run alone, with their constructor arguments and flags: everything sample.py,
    probe.py, trajectory_clf.py and semisup.py read, in a few MB (no optimiser, RNG or raw weights, so it
    cannot be resumed). config.json is written beside it.

        python checkpoint.py runs/fashion_mnist-drl/ckpt.pt pretrained/fashion_mnist-drl/ckpt.pt"""
    ckpt, dst = read_checkpoint(src), Path(dst)
    slim = {k: ckpt[k] for k in ("kind", "version", "step", "train_seconds", "args", "config")}
    slim.update({k: v for k, v in ckpt.items() if k.startswith("ema_")}, weights_only=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_together({dst: slim, dst.with_name("config.json"): json.dumps(
        dict(args=ckpt["args"], nets=ckpt["config"], exported_from=str(src)), indent=2)})


def load_run(path, device="cpu", ema=True):
    """Load a train_drl.py run: returns (score_net or None, encoder or None, sde, ckpt), networks in
    eval mode on `device`, EMA weights unless ema=False (score_net is None for the AE, VAE and SimCLR
    baselines, encoder None for a plain score model)."""
    ckpt = read_checkpoint(path)
    if not ema and ckpt.get("weights_only"):
        raise CheckpointError(f"{path} holds the EMA weights alone (exported); leave out --no-ema")
    nets = build_nets(ckpt["config"])
    for name, net in nets.items():
        net.load_state_dict(ckpt[("ema_" if ema else "") + name])
        net.to(device).eval()
    sde = VESDE(ckpt["args"]["sigma_min"], ckpt["args"]["sigma_max"])
    return nets.get("score_net"), nets.get("encoder"), sde, ckpt


def run_name(path):
    """A short name that identifies a checkpoint: its folder, plus the file's stem unless it is ckpt.pt."""
    path = Path(path)
    return path.resolve().parent.name + ("" if path.name == "ckpt.pt" else f"-{path.stem}")


if __name__ == "__main__":
    import sys
    if len(sys.argv) != 3:
        raise SystemExit("usage: python checkpoint.py RUN/ckpt.pt OUT/ckpt.pt   (export a run's EMA weights alone)")
    try:
        export_ema(*sys.argv[1:])
    except (CheckpointError, WriteError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {sys.argv[2]} and its config.json")
