#!/bin/bash
# The GPU checks in one script, within LIMIT seconds: the CUDA-graph tests, the speed table (ours eager
# and graphed, the peer beside it), then the `paper` preset on Fashion-MNIST for what is left of LIMIT seconds (its full
# 80k steps if the step is fast enough). Everything is logged to $OUT/log.txt; the run's stats and its
# EMA weights (no optimiser state, under 16 MB) come back as $OUT/stats.jsonl, $OUT/paper.log and
# $OUT/paper_ema.pt.
#   needs: Fashion-MNIST's IDX files in data/fashion_mnist; the peer's wheels in .whl (benchmarks/peer.py)
set -u
LIMIT=${LIMIT:-570}
export OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
START=$(date +%s)
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
left() { echo $((LIMIT - ($(date +%s) - START))); }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
date -u

echo "== tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py
GRAPH_OK=$?
GRAPH=$([ $GRAPH_OK = 0 ] && echo --cuda-graph || echo)
echo "tests rc $GRAPH_OK; paper run with '${GRAPH:-eager}'"

echo "== speed (train_drl.py --benchmark)"
B="python3 train_drl.py --dataset fashion_mnist"
for row in "--preset paper --benchmark 100" "--preset paper --benchmark 300 --cuda-graph" \
           "--preset cpu --benchmark 100" "--preset cpu --benchmark 300 --cuda-graph"; do
  echo "-- $row"
  timeout 60 $B $row
done

echo "== peer (benchmarks/peer.py, ch 32, 2 blocks, batch 128)"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
  PYTHONPATH=/tmp/site timeout 120 python3 benchmarks/peer.py --device cuda --ch 32 --num-res-blocks 2 \
    --batch-size 128 --steps 200 --modes eager,graph --limit 50

MIN=$(python3 -c "print(max(0.5, ($(left) - 75) / 60))")
echo "== paper preset, --minutes $MIN ($(left) s left)"
rm -rf runs/gpu-paper
timeout $(( $(left) - 30 )) $B --preset paper $GRAPH --probe-n 5000 --minutes "$MIN" --out runs/gpu-paper \
  > "$OUT/paper.log" 2>&1
grep -E "^(drl|step .*probe|done|stopped|error)|Error" "$OUT/paper.log"; tail -3 "$OUT/paper.log"
cp runs/gpu-paper/stats.jsonl "$OUT/" 2>/dev/null
python3 - <<'EOF'
import torch, os
c = torch.load("runs/gpu-paper/ckpt.pt", map_location="cpu", weights_only=True)
for k in ("opt", "scaler", "rng"):
    c.pop(k, None)
for k in ("score_net", "encoder", "decoder", "projector"):
    c[k] = None  # the EMA copies stay: what probe.py and sample.py load
torch.save(c, os.environ["OUT"] + "/paper_ema.pt")
print("saved EMA weights at step", c["step"])
EOF
echo "== done, $(left) s of $LIMIT left"
