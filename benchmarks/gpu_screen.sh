#!/bin/bash
# One call on a lent GPU: the levers of the `cpu` preset's code (DRL, "code first": --ch 4
# --t-uniform-share 0) and of the autoencoder, each at its 15 one-core-minute budget in steps
# (RESULTS.md, "DRL against the autoencoder"), two seeds, trained eight at a time by
# benchmarks/gpu_screen.py and probed by probe.py on all 60k / 10k images. fp32 (--amp off, TF32
# matmuls), to stay near the CPU's arithmetic. Back in $OUT: log.txt, results.tgz (screen.jsonl and
# every probe.json), ema_N.tgz (the DRL runs' EMA weights, what probe.py and sample.py read; the
# AEs' decoders make theirs too large to bring back).
#   needs: Fashion-MNIST's IDX files in data/fashion_mnist
set -u
LIMIT=${LIMIT:-540}  # seconds for the whole script
export OUT=${OUT:-/tmp/gpu_screen}; mkdir -p "$OUT"
START=$(date +%s)
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
left() { echo $((LIMIT - ($(date +%s) - START))); }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"

CF="--amp off --ch 4 --t-uniform-share 0"   # DRL, code first: 7467 steps = 15 one-core minutes
AE="--amp off --objective ae --lr 1e-3 --enc-lr-mult 0.3"   # the better AE: 9225 steps
ROWS=()
two() { ROWS+=("$1-s0=$2 --seed 0" "$1-s1=$2 --seed 1"); }   # a lever, seeds 0 and 1
two cf "$CF --steps 7467"
two ae "$AE --steps 9225"
two cf-ema999 "$CF --steps 7467 --ema 0.999"
two ae-ema999 "$AE --steps 9225 --ema 0.999"
two cf-cos "$CF --steps 7467 --lr-decay cosine"
two ae-cos "$AE --steps 9225 --lr-decay cosine"
two cf-do1 "$CF --steps 7094 --dropout 0.1"                  # step cost 1.05x (cpu_step.py)
two cf-vdrl "$CF --steps 7467 --objective vdrl"
two cf-smax10 "$CF --steps 7467 --sigma-max 10"
two cf-ln1 "$CF --steps 7467 --t-sampling lognormal --p-mean 1.0 --p-std 1.5"
two cf-ch2 "$CF --steps 9260 --ch 2"                         # 1.24x cheaper
two cf-npi2 "$CF --steps 4928 --noise-per-image 2"           # 1.52x dearer
two cf-b128 "$CF --steps 3995 --batch-size 128"              # images/s 1.07x
two ae-b128 "$AE --steps 4815 --batch-size 128"              # images/s 1.04x the AE's
two cf-l256 "$CF --steps 7467 --latent-dim 256"
two cf-lr2 "$CF --steps 7467 --lr 2e-3 --enc-lr-mult 0.15"   # the encoder's lr unchanged
ROWS+=("cf-s2=$CF --steps 7467 --seed 2" "ae-s2=$AE --steps 9225 --seed 2")
two cf-do3 "$CF --steps 7094 --dropout 0.3"
two cf-elr5 "$CF --steps 7467 --enc-lr-mult 0.5"
ROWS+=("cf-decorr-s0=$CF --steps 7467 --decorr 0.1 --seed 0")

rm -rf runs/gs probes/gs
timeout $(( $(left) - 40 )) python3 benchmarks/gpu_screen.py --out runs/gs --probe --probe-out probes/gs --group 8 \
  --limit $(( $(left) - 150 )) --rows "${ROWS[@]}"
RC=$?; echo "screen rc $RC ($(left) s left)"
if [ $RC != 0 ] && [ ! -s runs/gs/screen.jsonl ]; then  # streams side by side failed: one run at a time
  rm -rf runs/gs probes/gs
  timeout $(( $(left) - 40 )) python3 benchmarks/gpu_screen.py --out runs/gs --probe --probe-out probes/gs --group 1 \
    --limit $(( $(left) - 150 )) --rows "${ROWS[@]}"
  echo "screen, one at a time, rc $? ($(left) s left)"
fi

tar czf "$OUT/results.tgz" runs/gs/screen.jsonl probes/gs/*/probe.json
python3 - <<'EOF'
import glob, os, tarfile, torch
paths = sorted(p for p in glob.glob("runs/gs/*/ckpt.pt") if not p.startswith("runs/gs/ae"))
for i in range(0, len(paths), 12):
    with tarfile.open(f"{os.environ['OUT']}/ema_{i // 12}.tgz", "w:gz") as tar:
        for p in paths[i:i + 12]:
            c = torch.load(p, map_location="cpu", weights_only=True)
            for k in ("opt", "scaler", "rng"):
                c.pop(k, None)
            for k in ("score_net", "encoder", "decoder", "projector"):
                c[k] = None  # the EMA copies stay
            torch.save(c, p + ".ema")
            tar.add(p + ".ema", arcname=p)
            tar.add(p.replace("ckpt.pt", "config.json"))
print("packed", len(paths), "runs")
EOF
ls -la "$OUT"; echo "== done, $(left) s of $LIMIT left"
