"""The data sets: every stage reads its images through `load_dataset`. Imports no network.

Data sets come back whole as uint8 tensors (N, C, H, W) with int64 labels: MNIST-sized sets fit in
memory (and on a GPU), so training indexes random batches with no DataLoader workers.
"""
import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "shapes", "color_shapes")
IMAGE_SHAPE = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "shapes": (1, 28, 28),
               "cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "color_shapes": (3, 32, 32)}
MADE_IN_CODE = ("shapes", "color_shapes")  # no files, no download
# Debian's `apt-get install dataset-fashion-mnist` puts the IDX files here.
SYSTEM_IDX_DIRS = {"fashion_mnist": ["/usr/share/datasets/fashion-mnist"]}
IDX_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class DataError(Exception):
    """A data set that cannot be had; its message says where we looked and what to do."""


def read_idx(path, ndim):
    """Read an IDX file of unsigned bytes with `ndim` dimensions (plain or .gz) into a numpy array. A file
    that is not one, or holds fewer or more bytes than its header promises, raises DataError."""
    redo = ("download it again, or reinstall the package it came from (apt-get install --reinstall "
            "dataset-fashion-mnist)")
    try:
        with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as f:
            header = f.read(4)
            if len(header) == 4:
                zero, dtype, dims = struct.unpack(">HBB", header)
                if zero != 0 or dtype != 0x08 or dims != ndim:
                    raise DataError(f"{path}: not an IDX file of {ndim}-d unsigned bytes (header {header.hex()}); {redo}")
                header = f.read(4 * ndim)
            if len(header) != 4 * ndim:
                raise DataError(f"{path}: cut short inside its header; {redo}")
            shape = struct.unpack(">" + "I" * ndim, header)
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot be read ({type(e).__name__}: damaged or cut short); {redo}") from None
    if len(data) != math.prod(shape):
        raise DataError(f"{path}: its header promises {math.prod(shape)} bytes of data and it holds {len(data)}; {redo}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def find_idx(folder, stem):
    for name in (stem, stem + ".gz"):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


DEFAULT_DATA_DIR = "./data"


def idx_folders(name, data_dir=None):
    """Where IDX files may lie: in data_dir (or its torchvision layout); with data_dir None, in ./data
    and then the system's copy. A folder the user names is the only place looked in."""
    torchvision_name = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name]
    root = Path(data_dir or DEFAULT_DATA_DIR)
    system = [] if data_dir else list(map(Path, SYSTEM_IDX_DIRS.get(name, [])))
    return [root, root / name, root / torchvision_name / "raw", *system]


def make_shapes(n, seed=0, size=28):
    """A tiny procedural data set with a coarse and a fine factor, made in code (no download).

    Coarse factor, the label: the shape (0 circle, 1 square, 2 diamond, 3 plus). Fine factor: the
    stroke width, 1, 2 or 3 pixels. Radius and centre vary a little. Outlines are antialiased by
    drawing pixels whose distance to the outline is below half the width. Returns
    (images uint8 (n, 1, size, size), shape labels (n,), stroke widths (n,)).
    """
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(4, (n,), generator=g)
    width = torch.randint(1, 4, (n,), generator=g).float()
    radius = size * (0.22 + 0.12 * torch.rand(n, generator=g))
    centre = size / 2 - 0.5 + 2 * (torch.rand(n, 2, generator=g) - 0.5)
    coords = torch.arange(size, dtype=torch.float32)
    dy = coords[None, :, None] - centre[:, 0, None, None]
    dx = coords[None, None, :] - centre[:, 1, None, None]
    r, ax, ay = radius[:, None, None], dx.abs(), dy.abs()
    dist = torch.stack([
        (torch.sqrt(dx ** 2 + dy ** 2) - r).abs(),                      # circle
        (torch.maximum(ax, ay) - r).abs(),                              # square
        (ax + ay - r).abs() / 2 ** 0.5,                                 # diamond
        torch.where(ax < ay, torch.maximum(ax, ay - r), torch.maximum(ay, ax - r)).clamp(min=0),  # plus
    ])[label, torch.arange(n)]
    img = (width[:, None, None] / 2 - dist + 0.5).clamp(0, 1)
    return (img * 255).round().to(torch.uint8)[:, None], label, width.long()


SHAPES_SPLITS = {True: (6000, 0), False: (1000, 1)}  # (images, seed) of the training and test sets


def make_color_shapes(n, seed=0):
    """`shapes` at 32x32 in colour, CIFAR's shape (3, 32, 32): each outline in a random colour (a nuisance,
    not the label), on black. Returns (images uint8 (n, 3, 32, 32), shape labels, stroke widths)."""
    images, label, width = make_shapes(n, seed, size=32)
    colour = 0.25 + 0.75 * torch.rand(n, 3, 1, 1, generator=torch.Generator().manual_seed(seed + 1000))
    return (images.float() * colour).round().to(torch.uint8), label, width


def made_in_code(name, train=True):
    """(images, labels, stroke widths) of a set made in code."""
    return (make_shapes if name == "shapes" else make_color_shapes)(*SHAPES_SPLITS[train])


def shapes_fine_factor(name="shapes", train=True, classes=None):
    """The stroke widths (N,) of `shapes` (or `color_shapes`) images, in load_dataset's order: the fine factor."""
    _, labels, width = made_in_code(name, train)
    return width if classes is None else width[keep_classes(labels, classes)[0]]


def keep_classes(labels, classes):
    """(index of the images whose label is in `classes`, their labels renumbered 0 ... len(classes) - 1)."""
    table = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
    table[torch.tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
    idx = (table[labels] >= 0).nonzero().squeeze(1)
    return idx, table[labels[idx]]


def missing_message(name, data_dir, error):
    """One line: where we looked, which files would do, and the offline way out."""
    if name in ("mnist", "fashion_mnist"):
        looked = ", ".join(map(str, idx_folders(name, data_dir)))
        files = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES[True] + IDX_FILES[False])
        need = f"put {files} in one of them or pass --data-dir"
    else:
        looked, need = data_dir or DEFAULT_DATA_DIR, "copy torchvision's copy of it there or pass --data-dir"
    offline = ("`apt-get install dataset-fashion-mnist`" if name == "fashion_mnist" else
               "--dataset fashion_mnist after `apt-get install dataset-fashion-mnist`")
    return (f"{name}: not found in {looked} and the download failed ({type(error).__name__}): {need}; "
            f"offline, use {offline}, or --dataset shapes (made in code)")


def idx_paths(name, data_dir, train):
    """The (images, labels) IDX files of an MNIST-like set, from the first folder that holds both; or None."""
    for folder in idx_folders(name, data_dir):
        paths = [find_idx(folder, stem) for stem in IDX_FILES[train]]
        if all(paths):
            return paths
    return None


def data_source(name, data_dir=None):
    """Where load_dataset reads `name` from, for the first line of a run: a folder, or how it is made."""
    if name in MADE_IN_CODE:
        return "made in code"
    paths = idx_paths(name, data_dir, True) if name in ("mnist", "fashion_mnist") else None
    return str(paths[0].parent) if paths else str(Path(data_dir or DEFAULT_DATA_DIR))


def load_dataset(name, data_dir=None, train=True, classes=None):
    """Return (images uint8 (N, C, H, W), labels int64 (N,)); with `classes` (e.g. [0, 1, 2]) only those
    classes, their labels renumbered 0, 1, ... in that order. data_dir None: ./data, then the system's copy
    (Fashion-MNIST from Debian), then a download into ./data. Raises DataError with a one-line fix."""
    images, labels = load_all(name, data_dir, train)
    if classes is None:
        return images, labels
    bad = [c for c in classes if not 0 <= c <= int(labels.max())]
    if bad or len(set(classes)) != len(classes):
        raise DataError(f"--classes {','.join(map(str, classes))}: {name} has classes 0 ... {int(labels.max())}; "
                        f"name each at most once")
    idx, labels = keep_classes(labels, classes)
    return images[idx], labels


def load_all(name, data_dir=None, train=True):
    if name in MADE_IN_CODE:
        images, labels, _ = made_in_code(name, train)
        return images, labels
    if name in ("mnist", "fashion_mnist"):
        paths = idx_paths(name, data_dir, train)
        if paths:
            images, labels = (torch.from_numpy(read_idx(p, ndim).copy()) for p, ndim in zip(paths, (3, 1)))
            if len(images) != len(labels):
                raise DataError(f"{paths[0]} holds {len(images)} images and {paths[1]} {len(labels)} labels; download "
                                f"the pair again, or reinstall the package it came from")
            return images[:, None], labels.long()
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")
    import torchvision  # only for the downloads
    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST,
           "cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    root = Path(data_dir or DEFAULT_DATA_DIR)
    folders_before = {p for p in (root, *root.rglob("*")) if p.is_dir()}
    try:
        ds = cls(root=root, train=train, download=True)
    except Exception as e:  # offline, or a broken partial download: the folders it made go again
        made = (p for p in (root, *root.rglob("*")) if p.is_dir() and p not in folders_before)
        for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
        raise DataError(missing_message(name, data_dir, e)) from None
    images = torch.as_tensor(np.asarray(ds.data))
    images = images[:, None] if images.dim() == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(np.asarray(ds.targets)).long()
