"""--cuda-graph: the captured step computes what the eager step computes. The graph tests need a CUDA
device and are skipped without one; on a CPU the flag is one clear error."""
import pytest
import torch

import train_drl

TINY = ["--dataset", "shapes", "--preset", "cpu", "--ch", "8", "--batch-size", "16", "--eval-n", "16",
        "--log-every", "2", "--warmup", "2", "--probe-n", "0", "--latent-dim", "8"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def test_cuda_graph_needs_a_cuda_device(tmp_path):
    with pytest.raises(SystemExit, match="^error: --cuda-graph needs a CUDA device"):
        train_drl.main(TINY + ["--device", "cpu", "--cuda-graph", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@cuda
@pytest.mark.parametrize("extra", [[], ["--objective", "vdrl"], ["--time-cond"], ["--objective", "ae"]])
def test_replayed_step_equals_the_eager_step(extra):
    """Both runs start from the same weights and see the same batches and CUDA seeds; every step
    after the capture is a replay with a new batch, lr, EMA weight and seed, and must give the eager
    step's loss and weights to bf16 tolerance (a graph that replayed stale inputs would not)."""
    device = torch.device("cuda")

    def build(flags):
        torch.manual_seed(0)
        return train_drl.Training(train_drl.parse_args(TINY + extra + ["--device", "cuda"] + flags), "unused", device)

    eager, graphed = build([]), build(["--cuda-graph"])
    data = torch.Generator(device=device).manual_seed(1)
    losses = []
    for step in range(graphed.step_fn.warmup + 3):
        x0 = torch.rand(16, 1, 28, 28, device=device, generator=data).contiguous(memory_format=eager.memory_format)
        pair = []
        for tr in (eager, graphed):
            torch.cuda.manual_seed(100 + step)
            pair.append(tr.train_step(x0)[0].item())
        losses.append(pair)
    assert graphed.step_fn.graph is not None and eager.step_fn == eager.update
    for e, g in losses:
        assert abs(e - g) <= 2e-2 * abs(e), losses
    assert len({round(e, 3) for e, _ in losses[-3:]}) == 3  # the replays saw new batches and noise
    for k in eager.nets:
        for a, b in zip(graphed.nets[k].parameters(), eager.nets[k].parameters()):
            assert relative_error(a, b) < 2e-2, k
        for a, b in zip(graphed.emas[k].parameters(), eager.emas[k].parameters()):
            assert relative_error(a, b) < 2e-2, k


@cuda
def test_graphed_run_saves_resumes_and_benchmarks(tmp_path, capsys):
    out = str(tmp_path / "run")
    train_drl.main(TINY + ["--device", "cuda", "--cuda-graph", "--steps", "8", "--save-every", "4", "--out", out])
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 8
    train_drl.main(TINY + ["--device", "cuda", "--steps", "12", "--save-every", "4", "--out", out])  # eager resume
    train_drl.main(TINY + ["--device", "cuda", "--cuda-graph", "--steps", "16", "--save-every", "4", "--out", out])
    assert torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)["step"] == 16
    train_drl.main(TINY + ["--device", "cuda", "--cuda-graph", "--benchmark", "5"])  # recaptures at half the batch
    assert "images/s" in capsys.readouterr().out


@cuda
def test_graphs_replayed_side_by_side_learn_what_one_alone_learns():
    """Two AE runs (no random draws in their step) captured and replayed on two streams at once must
    end where the same run alone ends. Graphs captured on torch's shared capture stream shared one
    cuBLAS workspace and raced when replayed side by side (screened codes fell 3-7 points); each
    capture has a stream of its own."""
    device = torch.device("cuda")
    flags = TINY + ["--device", "cuda", "--cuda-graph", "--objective", "ae", "--amp", "off"]

    def build(seed):
        torch.manual_seed(seed)
        return train_drl.Training(train_drl.parse_args(flags + ["--seed", str(seed)]), "unused", device)

    def run(trainers, steps=60):
        streams = [torch.cuda.Stream(device) for _ in trainers]
        for _ in range(steps):
            for tr, s in zip(trainers, streams):
                with torch.cuda.stream(s):
                    tr.train_step(tr.next_batch())
        torch.cuda.synchronize(device)
        return [torch.cat([p.flatten() for p in tr.nets["encoder"].parameters()]) for tr in trainers]

    alone = run([build(0)])[0]
    side = run([build(0), build(1), build(2)])[0]
    assert relative_error(side, alone) < 1e-3
