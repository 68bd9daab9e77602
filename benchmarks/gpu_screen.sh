#!/bin/bash
# One call on a lent GPU: the levers of the `cpu` preset's code (DRL, "code first": --ch 4
# --t-uniform-share 0) and of the autoencoder, each at its 15 one-core-minute budget in steps
# (RESULTS.md, "DRL against the autoencoder"), two seeds, trained eight at a time by
# benchmarks/gpu_screen.py and probed by probe.py on all 60k / 10k images. fp32 (--amp off, TF32
# matmuls), to stay near the CPU's arithmetic. Back in $OUT: log.txt, results.tgz (screen.jsonl and
# every probe.json), ema_N.tgz (the runs' EMA weights, what probe.py and sample.py read). It first
# checks that runs side by side learn what a run alone learns (else it trains one at a time).
# SCREEN=seeds trains the other row set (more seeds of both, the noise levels the code is trained on);
# DRY=1 only parses the rows.
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
# in order of interest; the --limit drops the last groups when time runs short
if [ "${SCREEN:-levers}" = seeds ]; then
  # SCREEN=seeds: the code first against the AE on more seeds of one card, the encoder at the score
  # net's rate for both (the last lever of the list below), and low-noise training times for the code
  ROWS+=("ae-s2=$AE --steps 9225 --seed 2" "ae-s3=$AE --steps 9225 --seed 3" "ae-s4=$AE --steps 9225 --seed 4")
  two cf-enc1 "$CF --steps 7467 --enc-lr-mult 1.0"
  two ae-enc1 "$AE --steps 9225 --enc-lr-mult 1.0"
  ROWS+=("cf-s5=$CF --steps 7467 --seed 5")
  for s in 5 6 7; do ROWS+=("ae-s$s=$AE --steps 9225 --seed $s"); done
  ROWS+=("cf-s6=$CF --steps 7467 --seed 6" "cf-s7=$CF --steps 7467 --seed 7")
  ROWS+=("cf-enc1-s2=$CF --steps 7467 --enc-lr-mult 1.0 --seed 2" "ae-enc1-s2=$AE --steps 9225 --enc-lr-mult 1.0 --seed 2")
  two cf-lnlo "$CF --steps 7467 --t-sampling lognormal --p-mean -1.2 --p-std 1.2"   # EDM's times: median sigma 0.3
  two cf-uni "$CF --steps 7467 --t-sampling uniform"                                 # the papers' times
  two cf-lnmid "$CF --steps 7467 --t-sampling lognormal --p-mean 0 --p-std 1.2"     # median sigma 1
  two cf-fix5 "$CF --steps 7467 --t-sampling fixed --t-fixed 0.5"                   # one noise level, sigma 0.71
  ROWS+=("cf-lnlo-s2=$CF --steps 7467 --t-sampling lognormal --p-mean -1.2 --p-std 1.2 --seed 2")
else
  two cf "$CF --steps 7467"
  two ae "$AE --steps 9225"
  two cf-cos "$CF --steps 7467 --lr-decay cosine"              # a budget known in advance
  two ae-cos "$AE --steps 9225 --lr-decay cosine"
  two cf-smax10 "$CF --steps 7467 --sigma-max 10"
  two cf-do1 "$CF --steps 7094 --dropout 0.1"                  # 1.05x dearer (cpu_step.py)
  two cf-ln1 "$CF --steps 7467 --t-sampling lognormal --p-mean 1.0 --p-std 1.5"
  two cf-b128 "$CF --steps 3995 --batch-size 128"              # images/s 1.07x
  two ae-b128 "$AE --steps 4815 --batch-size 128"              # images/s 1.04x the AE's
  two cf-vdrl "$CF --steps 7467 --objective vdrl"
  two cf-ch2 "$CF --steps 9260 --ch 2"                         # 1.24x cheaper
  two cf-npi2 "$CF --steps 4928 --noise-per-image 2"           # 1.52x dearer
  two cf-enc1 "$CF --steps 7467 --enc-lr-mult 1.0"             # the encoder at the score net's 1e-3
  two ae-enc1 "$AE --steps 9225 --enc-lr-mult 1.0"
  ROWS+=("cf-s2=$CF --steps 7467 --seed 2" "ae-s2=$AE --steps 9225 --seed 2")
fi
if [ "${DRY:-0}" = 1 ]; then  # parse every row here, train nothing
  python3 -c "
import shlex, sys, train_drl
for row in sys.argv[1:]:
    train_drl.parse_args(['--dataset', 'fashion_mnist'] + shlex.split(row.partition('=')[2]))
print(len(sys.argv) - 1, 'rows parsed')" "${ROWS[@]}"
  exit $?
fi

rm -rf runs/gs probes/gs runs/gcheck
echo "== check: the same AE and DRL runs alone and four side by side (1000 steps; final losses must agree)"
python3 benchmarks/gpu_screen.py --out runs/gcheck/solo --group 1 --rows "ae=$AE --steps 1000" "cf=$CF --steps 1000"
python3 benchmarks/gpu_screen.py --out runs/gcheck/side --group 4 --rows "ae=$AE --steps 1000" "cf=$CF --steps 1000" \
  "ae1=$AE --steps 1000 --seed 1" "cf1=$CF --steps 1000 --seed 1"
GROUP=$(python3 -c "
import json
loss = lambda p: {r['name']: r['final_loss'] for r in map(json.loads, open(p))}
solo, side = loss('runs/gcheck/solo/screen.jsonl'), loss('runs/gcheck/side/screen.jsonl')
print(solo, side, file=__import__('sys').stderr)
print(8 if abs(side['ae'] / solo['ae'] - 1) < 0.01 else 1)" || echo 1)
echo "runs side by side: $GROUP"
timeout $(( $(left) - 30 )) python3 benchmarks/gpu_screen.py --out runs/gs --probe --probe-out probes/gs --group $GROUP \
  --limit $(( $(left) - 70 )) --rows "${ROWS[@]}"
RC=$?; echo "screen rc $RC ($(left) s left)"
if [ $RC != 0 ] && [ ! -s runs/gs/screen.jsonl ]; then  # streams side by side failed: one run at a time
  rm -rf runs/gs probes/gs
  timeout $(( $(left) - 40 )) python3 benchmarks/gpu_screen.py --out runs/gs --probe --probe-out probes/gs --group 1 \
    --limit $(( $(left) - 70 )) --rows "${ROWS[@]}"
  echo "screen, one at a time, rc $? ($(left) s left)"
fi

tar czf "$OUT/results.tgz" runs/gs/screen.jsonl runs/gcheck/*/screen.jsonl probes/gs/*/probe.json
python3 - <<'EOF'
import glob, os, tarfile, torch
paths, packs = sorted(glob.glob("runs/gs/*/ckpt.pt")), [[]]
for p in paths:  # EMA weights only (what probe.py and sample.py read), in tars of at most 15 MB
    c = torch.load(p, map_location="cpu", weights_only=True)
    for k in ("opt", "scaler", "rng"):
        c.pop(k, None)
    for k in ("score_net", "encoder", "decoder", "projector"):
        c[k] = None  # the EMA copies stay
    torch.save(c, p + ".ema")
    size = os.path.getsize(p + ".ema") / 1e6  # gzip saves little on float weights
    if sum(s for _, s in packs[-1]) + size > 15:
        packs.append([])
    packs[-1].append((p, size))
for i, pack in enumerate(packs[:6]):
    with tarfile.open(f"{os.environ['OUT']}/ema_{i}.tgz", "w:gz") as tar:
        for p, _ in pack:
            tar.add(p + ".ema", arcname=p)
            tar.add(p.replace("ckpt.pt", "config.json"))
print("packed", sum(len(pack) for pack in packs[:6]), "of", len(paths), "runs (the rest did not fit six tars)")
EOF
ls -la "$OUT"; echo "== done, $(left) s of $LIMIT left"
