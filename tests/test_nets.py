"""U-Net and encoder: shapes, FiLM conditioning, encoder kinds."""
import math

import pytest
import torch
import torch.nn.functional as F

from baselines import Decoder, nt_xent
from encoder import Encoder, encode
from unet import ResBlock, UNet

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
    net = UNet(**TINY)
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
    net = randomise_zero_inits(UNet(**TINY))
    raw = []
    net.out.register_forward_hook(lambda module, inputs, output: raw.append(output))
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1e-5, 0.6])
    score = net(x, t)
    std = torch.sqrt(net.sde.sigma(t) ** 2 - 0.01 ** 2)[:, None, None, None]
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
    z, mu2, _ = det.sample(x)
    assert torch.equal(z, mu2)

    prob = randomise_zero_inits(Encoder(latent_dim=5, probabilistic=True, **TINY))
    z, mu, logvar = prob.sample(x)
    assert z.shape == mu.shape == logvar.shape == (4, 5) and not torch.allclose(z, mu)
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


def test_per_resolution_code_maps_reach_the_score_at_every_lower_resolution():
    """With code_map_every_res the code enters after each downsampling too: with FiLM and the stem's
    map cut, z still steers the score through those maps, and cutting them as well leaves none."""
    net = randomise_zero_inits(UNet(latent_dim=6, code_map=True, code_map_from="z", code_map_every_res=True,
                                    ch=8, ch_mult=(1, 2, 2), num_res_blocks=1))
    assert [m.out_features for m in net.res_maps] == [8 * 49, 16 * 49]  # the widths after each downsampling
    x, t, z1, z2 = torch.randn(2, 1, 28, 28), torch.full((2,), 0.5), torch.randn(2, 6), torch.randn(2, 6)
    for block in net.modules():
        if isinstance(block, ResBlock):
            torch.nn.init.zeros_(block.film.weight)
    torch.nn.init.zeros_(net.code_map.weight)
    assert not torch.allclose(net(x, t, z1), net(x, t, z2))
    for layer in net.res_maps:
        torch.nn.init.zeros_(layer.weight)
    assert torch.allclose(net(x, t, z1), net(x, t, z2))


def test_patch_folds_pixel_blocks_into_channels_and_back():
    """--patch 2: each network works on 2x2 pixel blocks folded into channels; every output keeps the
    image's shape, the score of one pixel depends on pixels of other blocks (the convolutions still
    mix neighbouring blocks), and fold / unfold are exact inverses."""
    from unet import fold, unfold
    x = torch.randn(3, 3, 32, 32)
    assert fold(x, 2).shape == (3, 12, 16, 16) and torch.equal(unfold(fold(x, 2), 2), x)
    assert torch.equal(fold(x, 2)[:, :4, 0, 0].flatten(), x[:, 0, :2, :2].flatten())  # one block = one position
    net = randomise_zero_inits(UNet(image_size=28, latent_dim=4, code_map=True, code_map_from="z", patch=2, **TINY))
    enc = Encoder(image_size=28, latent_dim=4, patch=2, **TINY)
    dec = Decoder(image_size=28, ch=8, ch_mult=(1, 2), latent_dim=4, patch=2)
    x = torch.randn(2, 1, 28, 28, requires_grad=True)
    z = enc(x)[0]
    assert z.shape == (2, 4) and dec(z).shape == (2, 1, 28, 28)
    score = net(x, torch.rand(2), z.detach())
    assert score.shape == x.shape
    score[0, 0, 0, 0].backward()
    assert x.grad[0, 0, 4:, 4:].abs().sum() > 0  # reaches beyond its own 2x2 block
    assert net.down[0].in_channels == 4 and enc.trunk[0].in_channels == 4
