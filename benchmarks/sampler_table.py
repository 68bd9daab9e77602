"""Sample quality against score evaluations: every sampler of sample.py on one or more checkpoints.

    python benchmarks/sampler_table.py runs/paper/ckpt.pt runs/edm/ckpt.pt --n 250 --dataset fashion_mnist \
        --out runs/sampler_table
    python benchmarks/sampler_table.py RUN/ckpt.pt --rows heun-18,heun-25,heun-25-shuffled ...

Each row is a sample.py command (`recon` mode, one sample per test image, the first N test images as
sources, seed 0 unless --seed) whose samples benchmarks/sample_quality.py scores: Fréchet distance of the
classifier's features against N test images (and that of N other test images), class agreement
with the source, saturation (pixels at 0 or 255, and at 255 alone). A row already sampled (its recon.pt exists) is scored without sampling
again, so a table can be filled in pieces. Prints a markdown table and writes OUT/table.jsonl.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import sample_quality  # noqa: E402

PC = ["--sampler", "pc", "--predictor"]
ROWS = {  # name: sample.py flags; NFE per image in the comment
    "pc-100": PC + ["reverse_diffusion", "--corrector-steps", "1", "--steps", "100"],     # 200: the papers' PC,
    "pc-1000": PC + ["reverse_diffusion", "--corrector-steps", "1", "--steps", "1000"],   # 2000  reverse diffusion + Langevin
    "em-100": PC + ["euler_maruyama", "--corrector-steps", "0", "--steps", "100"],        # 100
    "em-1000": PC + ["euler_maruyama", "--corrector-steps", "0", "--steps", "1000"],      # 1000
    "flow-100": PC + ["probability_flow", "--corrector-steps", "0", "--steps", "100"],    # 100
    "flow-1000": PC + ["probability_flow", "--corrector-steps", "0", "--steps", "1000"],  # 1000
    "heun-10": ["--sampler", "heun", "--steps", "10"],                                    # 19
    "heun-13": ["--sampler", "heun", "--steps", "13"],                                    # 25
    "heun-18": ["--sampler", "heun", "--steps", "18"],                                    # 35
    "heun-25": ["--sampler", "heun", "--steps", "25"],                                    # 49
    "heun-49": ["--sampler", "heun", "--steps", "49"],                                    # 97
    "heun-25-churn": ["--sampler", "heun", "--steps", "25", "--churn", "10"],             # 49
    "heun-25-shuffled": ["--sampler", "heun", "--steps", "25", "--shuffle-codes"],        # 49: chance agreement
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ckpts", nargs="+", help="train_drl.py checkpoints, or NAME=CKPT")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    p.add_argument("--n", type=int, default=250, help="samples per row = test images they are compared with")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir", default=None, help="default: ./data, then the system's copy")
    p.add_argument("--out", default="runs/sampler_table")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="the noise; rows of another seed go to ROW-sSEED folders")
    p.add_argument("--epochs", type=int, default=8, help="of the classifier, if OUT has none yet")
    args = p.parse_args(argv)
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"error: unknown rows {unknown}; choose from {', '.join(ROWS)}")
    out = Path(args.out)
    sampled = []  # (checkpoint name, row, folder)
    for spec in args.ckpts:
        name, ckpt = spec.split("=", 1) if "=" in spec else (Path(spec).parent.name, spec)
        if not Path(ckpt).exists():
            raise SystemExit(f"error: {ckpt} not found; pass a train_drl.py checkpoint")
        for row in rows:
            folder = out / name / (row if args.seed == 0 else f"{row}-s{args.seed}")
            if not (folder / "recon.pt").exists():
                cmd = [sys.executable, str(ROOT / "sample.py"), "--ckpt", ckpt, "--mode", "recon", "--n", str(args.n),
                       "--per-code", "1", "--save-tensor", "--out", str(folder), "--device", args.device,
                       "--seed", str(args.seed), *ROWS[row]]
                print(" ".join(cmd[1:]), flush=True)
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            sampled.append((name, row, folder))
    # one scoring pass: the test set and the classifier are loaded once
    qualities = sample_quality.main([*(str(folder / "recon.pt") for _, _, folder in sampled), "--dataset", args.dataset,
                                     *(["--data-dir", args.data_dir] if args.data_dir else []), "--out", str(out),
                                     "--device", args.device, "--epochs", str(args.epochs)])
    table = []
    for (name, row, folder), quality in zip(sampled, qualities):
        run = json.loads((folder / "recon.json").read_text())
        table.append(dict(ckpt=name, row=row, seed=args.seed, nfe=run["nfe_per_image"], seconds=run["seconds"],
                          **quality))
    with open(out / "table.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in table)
    print(f"\nN = {args.n} samples per row; FD of N test images against N others (an independent set): "
          f"{table[0]['fd_test_vs_test']:.2f}; classifier test accuracy {table[0]['classifier_test_accuracy']:.3f}; "
          f"test images' pixels at 0 or 255: {table[0]['saturation_test_images']:.3f}, "
          f"at 255: {table[0]['white_test_images']:.4f}\n")
    print("| checkpoint | sampler | NFE | FD (sources) | FD (other test images) | class agreement | pixels at 0 or 255 "
          "| at 255 | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['ckpt']} | {r['row']} | {r['nfe']} | {r['fd']:.1f} | {r['fd_independent']:.1f} | "
              f"{r['class_agreement']:.3f} | "
              f"{r['saturation_samples']:.3f} | {r['white_samples']:.4f} | {r['seconds']:.0f} |")
    return table


if __name__ == "__main__":
    main()
