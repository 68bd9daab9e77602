"""Codes for the downstream stages: a frozen encoder's codes of a uint8 image set, encoded in batches
(`encode_images`), cached on disk per (checkpoint file version, t, images) (`cached_codes`), and the
linear probe of a code (`probe_encoder`)."""
import hashlib
from pathlib import Path

import torch

from checkpoint import WriteError, save_atomic
from encoder import encode
from linear_probe import linear_probe, participation_ratio
from runtime import CACHE_FILES, MADE_FOLDERS, autocast, remove_stale_temps


@torch.no_grad()
def encode_images(encoder, images, t, device, batch_size=500):
    """Codes (N, D) float32 on `device` of uint8 images (N, C, H, W) at time t (None: no t); the mean
    for a probabilistic encoder."""
    codes = []
    for x in images.split(batch_size):
        with autocast(device):
            codes.append(encode(encoder, x.to(device).float() / 255, t).float())
    return torch.cat(codes)


@torch.no_grad()
def probe_encoder(encoder, images, labels, test_images, test_labels, device):
    """Linear probe and effective dimension (participation ratio) of an encoder's code (at t = 0.5 for a
    time-conditioned one): train_drl.py's probe curve."""
    t = 0.5 if encoder.time_cond else None
    train, test = encode_images(encoder, images, t, device), encode_images(encoder, test_images, t, device)
    return dict(probe_linear=linear_probe(train, labels, test, test_labels)[0], probe_pr=participation_ratio(test))


def checkpoint_key(path):
    """Names one version of a checkpoint file (path, mtime, size): a retrained run gets new codes."""
    stat = Path(path).stat()
    return f"{Path(path).resolve()}|{stat.st_mtime_ns}|{stat.st_size}"


def cached_codes(cache, key, make):
    """make() once per key; later runs load the codes from cache/KEY_HASH.pt."""
    path = Path(cache) / (hashlib.sha1(key.encode()).hexdigest()[:16] + ".pt")
    if path.parent.is_dir():
        remove_stale_temps(path.parent)  # a cache write cut short by Ctrl-C or a kill
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # a damaged cache file: encode again and write it anew
            path.unlink(missing_ok=True)
    codes = make().cpu()
    if not path.parent.exists():
        path.parent.mkdir(parents=True)
        MADE_FOLDERS.append(path.parent)  # gone again if nothing lands in it (a full disk, Ctrl-C)
    try:  # a cache that cannot be written (a full disk) costs time next run, not this run
        save_atomic(codes, path)
        CACHE_FILES.add(path)
    except (OSError, WriteError):
        if path.parent.is_dir() and not any(path.parent.iterdir()):
            path.parent.rmdir()
    return codes
