"""U-Net and encoder: shapes, FiLM conditioning, encoder kinds."""
import math

import pytest
import torch
import torch.nn.functional as F

from baselines import Decoder, nt_xent
from encoder import Encoder, encode
from sde import VESDE
from unet import ResBlock, ScoreNet, UNet

TINY = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1)


def randomise_zero_inits(net):
    """Zero-initialised output layers hide every input; give them weights to see the dependence."""
    g = torch.Generator().manual_seed(0)
    for p in net.parameters():
        if torch.all(p == 0):
            p.data = 0.1 * torch.randn(p.shape, generator=g)
    return net


@pytest.mark.parametrize("in_ch,size,ch_mult,attn", [(1, 28, (1, 2), ()), (1, 28, (1, 2, 2), (7,)),
                                                     (3, 32, (1, 2, 2, 2), (16,))])
def test_unet_shapes(in_ch, size, ch_mult, attn):
    net = UNet(in_ch=in_ch, image_size=size, ch=8, ch_mult=ch_mult, num_res_blocks=1, attn_res=attn, latent_dim=4)
    x = torch.randn(3, in_ch, size, size)
    assert net(x, torch.rand(3), torch.randn(3, 4)).shape == x.shape


def test_zero_initialised_net_predicts_kernel_score_of_zero_noise():
    """At init the net outputs F = 0, so the weighted loss ||std * s + noise||^2 starts at ||noise||^2."""
    net = ScoreNet(UNet(**TINY), VESDE())
    assert torch.all(net(torch.randn(2, 1, 28, 28), torch.rand(2)) == 0)


def test_latent_changes_the_score_through_film():
    net = randomise_zero_inits(UNet(latent_dim=3, **TINY))
    x, t = torch.randn(2, 1, 28, 28), torch.full((2,), 0.5)
    z1, z2 = torch.randn(2, 3), torch.randn(2, 3)
    assert not torch.allclose(net(x, t, z1), net(x, t, z2))
    for block in net.modules():  # FiLM is the only path from z to the output: cut it and z is ignored
        if isinstance(block, ResBlock):
            torch.nn.init.zeros_(block.film.weight)
    assert torch.allclose(net(x, t, z1), net(x, t, z2))
    with pytest.raises(ValueError, match="pass the code z"):
        net(x, t)


def test_film_is_scale_and_shift():
    """The block's output is skip(x) + conv2(silu(norm2(conv1(silu(norm1 x))) * (1 + scale) + shift)) with
    (scale, shift) = film(silu(cond)), recomputed here by hand with every layer random."""
    block = randomise_zero_inits(ResBlock(4, 6, cond_dim=5))
    x, cond = torch.randn(2, 4, 5, 5), torch.randn(2, 5)
    scale, shift = block.film(F.silu(cond))[:, :, None, None].chunk(2, dim=1)
    h = block.norm2(block.conv1(F.silu(block.norm1(x))))
    expected = block.skip(x) + block.conv2(F.silu(h * (1 + scale) + shift))
    assert torch.allclose(block(x, cond), expected, atol=1e-5)
    assert not torch.allclose(block(x, cond), block(x, torch.randn(2, 5)), atol=1e-3)  # the condition matters


def test_score_from_raw_output_in_both_parametrisations():
    """ScoreNet feeds F c_in x and log sigma(t), and reads its output as a score."""
    net = ScoreNet(randomise_zero_inits(UNet(**TINY)), VESDE())
    raw, seen = [], []
    net.net.out.register_forward_hook(lambda module, inputs, output: raw.append(output))
    net.net.register_forward_pre_hook(lambda module, inputs: seen.append(inputs))
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1e-5, 0.6])
    score = net(x, t)
    std = torch.sqrt(net.sde.sigma(t) ** 2 - 0.01 ** 2)[:, None, None, None]
    assert torch.allclose(seen[0][0], x / torch.sqrt(0.5 ** 2 + std ** 2))  # c_in
    assert torch.allclose(seen[0][1], torch.log(0.01 * 5000 ** t))  # c_noise = log sigma(t)
    assert raw[0].abs().min() > 0 and torch.isfinite(score).all()
    assert torch.allclose(score, raw[0] / std)
    net.precond, net.sigma_data, raw[:] = "edm", 0.3, []  # EDM: (c_skip x + c_out F - x) / std^2
    score = net(x, t)
    c_skip, c_out = 0.09 / (std ** 2 + 0.09), std * 0.3 / torch.sqrt(std ** 2 + 0.09)
    assert torch.allclose(score[1:], ((c_skip * x + c_out * raw[0] - x) / std ** 2)[1:], rtol=1e-4, atol=1e-5)
    assert torch.isfinite(score[:1]).all()  # at t = 1e-5 the direct formula cancels badly; ours does not


def test_encoder_kinds():
    x = torch.rand(4, 1, 28, 28)
    det = Encoder(latent_dim=5, **TINY)
    mu, logvar = det(x)
    assert mu.shape == (4, 5) and logvar is None

    prob = randomise_zero_inits(Encoder(latent_dim=5, probabilistic=True, **TINY))
    mu, logvar = prob(x)
    assert mu.shape == logvar.shape == (4, 5) and not torch.allclose(logvar, torch.zeros_like(logvar))
    assert torch.equal(encode(prob, x), mu)  # downstream use reads the mean

    tc = randomise_zero_inits(Encoder(latent_dim=5, time_cond=True, **TINY))
    assert not torch.allclose(encode(tc, x, 0.1), encode(tc, x, 0.9))
    assert torch.allclose(encode(tc, x, 0.3), encode(tc, x, torch.full((4,), 0.3)))
    with pytest.raises(ValueError, match="time-conditioned"):
        tc(x)
    assert torch.equal(encode(det, x, 0.1), encode(det, x, 0.9))  # a static code ignores t


def test_encoder_rgb_32():
    enc = Encoder(in_ch=3, image_size=32, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, latent_dim=7)
    assert encode(enc, torch.rand(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("in_ch,size,ch_mult", [(1, 28, (1, 2)), (3, 32, (1, 2, 2))])
def test_decoder_inverts_the_encoder_shapes(in_ch, size, ch_mult):
    dec = Decoder(in_ch, size, 8, ch_mult, latent_dim=5)
    assert dec(torch.randn(2, 5)).shape == (2, in_ch, size, size)


def test_nt_xent_against_closed_form():
    # B = 2 orthogonal pairs, each view equal to its partner: an anchor's row holds one positive with
    # similarity 1 / tau and two negatives with similarity 0, so the loss is log(e^(1/tau) + 2) - 1/tau
    h = torch.eye(2, 4)
    tau = 0.5
    assert torch.allclose(nt_xent(h, h, tau), torch.tensor(math.log(math.exp(1 / tau) + 2) - 1 / tau))
    # swapping the partners of the second view makes every positive a stranger: the loss grows
    assert nt_xent(h, h.flip(0), tau) > nt_xent(h, h, tau) + 1


def test_shapes_fine_factor_matches_the_images():
    from data import load_dataset, shapes_fine_factor
    images, labels = load_dataset("shapes", train=False)
    width = shapes_fine_factor(train=False)
    assert width.shape == labels.shape and set(width.unique().tolist()) == {1, 2, 3}
    ink = images.float().sum((1, 2, 3))
    for shape in range(4):  # within a shape, wider strokes put more ink on the page
        m = labels == shape
        means = [ink[m & (width == w)].mean() for w in (1, 2, 3)]
        assert means[0] < means[1] < means[2]


def test_unet_py_copies_alone(tmp_path):
    """unet.py imports torch and einops alone: copied into an empty folder, it builds and runs."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    shutil.copy(Path(__file__).parent.parent / "unet.py", tmp_path)
    script = ("import torch; from unet import UNet\n"
              "net = UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, latent_dim=4, code_map=True, latent_norm=True)\n"
              "print(tuple(net(torch.randn(2, 1, 28, 28), torch.randn(2), torch.randn(2, 4)).shape))")
    out = subprocess.run([sys.executable, "-E", "-s", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(2, 1, 28, 28)"
