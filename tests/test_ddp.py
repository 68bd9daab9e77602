"""torchrun-style DistributedDataParallel on CPU: 2 processes with gloo end with identical weights."""
import socket

import torch
import torch.multiprocessing as mp

import train_drl


def worker(rank, port, out, result_dir):
    import os
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    score_net, encoder = train_drl.main([
        "--dataset", "shapes", "--preset", "cpu", "--ch", "8", "--batch-size", "8", "--eval-n", "8",
        "--steps", "4", "--save-every", "4", "--log-every", "2", "--device", "cpu", "--out", out])
    torch.save({"score_net": score_net.state_dict(), "encoder": encoder.state_dict()}, f"{result_dir}/rank{rank}.pt")


def test_two_gloo_processes_hold_identical_weights(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)  # written once, by rank 0
    assert ckpt["step"] == 4
    for net in ("score_net", "encoder"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
            assert torch.equal(a[net][k], ckpt[net][k])
    changed = [not torch.equal(ckpt["score_net"][k], ckpt["ema_score_net"][k]) for k in ckpt["score_net"]]
    assert any(changed)  # it trained
