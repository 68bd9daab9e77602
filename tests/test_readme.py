"""The README walked as written: the worked example's commands in order as printed (with `D=color_shapes`,
the budgets shrunk by flags appended to each line), the recipe block verbatim in a folder holding only
the four files it names, and the shipped model read by sample.py and probe.py with no training."""
import gzip
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SHIPPED = ROOT / "pretrained" / "fashion_mnist-drl" / "ckpt.pt"
SHRINK = {  # appended to each stage's line: the same path at a test's budget (the last value of a flag wins)
    "train_drl.py": "--steps 2 --batch-size 8 --eval-n 8 --save-every 2 --log-every 2 --probe-n 0 --device cpu",
    "sample.py": "--n 2 --per-code 1 --steps 2 --device cpu",
    "probe.py": "--max-train 300 --max-test 100 --draws 1 --silhouette-n 100 --weight-decays 0 --device cpu",
    "trajectory_clf.py": "--points 3 --epochs 1 --seeds 1 --lrs 1e-3 --max-train 300 --max-test 100 --nmi-steps 2 "
                         "--nmi-n 100 --device cpu",
    "semisup.py": "--max-train 300 --max-test 100 --warmup-epochs 1 --epochs 1 --k 5 --device cpu",
}


def command_blocks(heading):
    """The 4-space-indented blocks under a README heading (up to the next one), each a list of lines."""
    section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks, block = [], []
    for line in section.splitlines():
        if line.startswith("    ") and line.strip():
            block.append(line[4:].split("  #", 1)[0].rstrip())  # the comment off, so flags can follow
        elif block:
            blocks, block = blocks + [block], []
    return blocks + ([block] if block else [])


def run_lines(lines, cwd, extra=""):
    """Run the lines as one bash script in cwd (holding links to the stages), each stage's line shrunk."""
    for f in ROOT.glob("*.py"):
        (Path(cwd) / f.name).symlink_to(f)
    (Path(cwd) / "pretrained").symlink_to(ROOT / "pretrained")
    script = ["set -euo pipefail"]
    for line in lines:
        if line.startswith("python "):
            stage = line.split()[1]
            line = f"{sys.executable} {line[len('python '):]} {SHRINK[stage]} {extra}"
        script.append(line)
    out = subprocess.run(["bash", "-c", "\n".join(script)], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"a README command failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_the_worked_example_chains(tmp_path):
    """As printed, with `D=color_shapes` (3 x 32 x 32, CIFAR's shape; the 1-channel path is every other
    stage test's) and the runs trained on three of its classes (the ICML paper's first three of
    CIFAR-10), which every later stage reads from the run."""
    chain = command_blocks("A worked example")[0]
    assert chain[0].startswith("D=") and all(line.startswith("python ") for line in chain[1:])
    assert len({line.split()[1] for line in chain[1:]}) == 5  # every stage is on the path
    chain = [line + (" --classes 0,1,2" if "train_drl.py" in line else "") for line in chain[1:]]
    run_lines(["D=color_shapes"] + chain, tmp_path)
    for made in ("runs/D-drl/ckpt.pt", "runs/D-ae/ckpt.pt", "runs/D-drl-tc/ckpt.pt", "samples/D/recon.png",
                 "probes/D/probe.json", "traj/D/trajectory.json", "ssl/D-drl/result.json", "ssl/D-random/result.json"):
        assert (tmp_path / made.replace("D", "color_shapes")).is_file(), made
    probed = json.loads((tmp_path / "probes" / "color_shapes" / "probe.json").read_text())
    assert probed["meta"]["test_images"] == 100 and set(probed["results"]) >= {"color_shapes-drl", "color_shapes-ae"}
    ckpt = torch.load(tmp_path / "runs" / "color_shapes-drl" / "ckpt.pt", weights_only=True)
    assert ckpt["args"]["classes"] == [0, 1, 2] and ckpt["config"]["encoder"]["in_ch"] == 3


def write_idx(path, array):
    array = array.astype("uint8")
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def fake_fashion_mnist(folder, n_train=300, n_test=100):
    """IDX files of random 28x28 images and labels: what --data-dir reads where Fashion-MNIST is absent."""
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", torch.randint(0, 256, (n, 28, 28), generator=g).numpy())
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", (torch.arange(n) % 10).numpy())


def test_the_shipped_model_samples_and_probes_with_no_training(tmp_path):
    """The pictures' commands as printed, and a probe of the shipped model (on stand-in data in CI)."""
    assert SHIPPED.is_file() and SHIPPED.stat().st_size < 4e6
    pictures = [b for b in command_blocks("A worked example") if any("pretrained/" in line for line in b)]
    assert pictures and all("pretrained/fashion_mnist-drl/ckpt.pt" in line for line in pictures[0])
    data = tmp_path / "data"
    data.mkdir()
    fake_fashion_mnist(data)
    run_lines(pictures[0] + ["python probe.py --ckpt pretrained/fashion_mnist-drl/ckpt.pt --out probes/shipped"],
              tmp_path, extra=f"--data-dir {data}")
    assert (tmp_path / "pics/recon.png").is_file() and (tmp_path / "pics/swap.png").is_file()
    assert (tmp_path / "probes/shipped/probe.json").is_file()


def test_the_recipe_block_pastes_and_runs(tmp_path):
    """Verbatim, in a folder holding only sde.py, unet.py, encoder.py and samplers.py; and it builds the
    default preset's networks (the same parameter counts as train_drl.py's)."""
    block = README.split("```python\n", 1)[1].split("```", 1)[0]
    for name in ("sde.py", "unet.py", "encoder.py", "samplers.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "recipe.py").write_text(block + "print(tuple(samples.shape), nfe)\n")
    out = subprocess.run([sys.executable, "-I", "recipe.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "(4, 1, 28, 28) 20"

    import train_flags
    from checkpoint import build_nets
    scope = {}
    exec(block.replace("steps=10)", "steps=1)"), scope)
    args = train_flags.parse_args(["--dataset", "fashion_mnist"])
    nets = build_nets(train_flags.net_config(args, sigma_data=0.354))
    for name in ("encoder", "score_net"):
        count = lambda m: sum(p.numel() for p in m.parameters())
        assert count(scope[name]) == count(nets[name]), name
    assert scope["loss_fn"].sample_t.keywords == dict(t=args.t_fixed)
    assert (scope["loss_fn"].uniform_share, scope["loss_fn"].share_trains_encoder) == (args.t_uniform_share, False)
