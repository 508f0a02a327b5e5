"""Siamese-Diffusion networks: the DHI, the pixel backbone, hints, saving/loading, sampling."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from nnaug.errors import NnaugError
from nnaug.generators.siamese.backbone import SiameseComponents
from nnaug.generators.siamese.building import build_pixel
from nnaug.generators.siamese.dhi import DenseHintInput, PatchMerge, default_dhi_channels
from nnaug.generators.siamese.sampling import sample_images

S = 16


def tiny_pixel(image_channels=3, mask_channels=1, seed=0) -> SiameseComponents:
    return build_pixel(image_channels, mask_channels, S, block_out_channels=(8, 16), cross_attention_dim=16,
                       attention_head_dim=2, text_length=2, dhi_channels=(4, 8), seed=seed)


def perturb(module: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    """Make every zero-initialised weight non-zero so that no path is hidden behind a zero conv."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def labels(b: int, k: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, k + 1, (b, S, S), generator=g)


# ----------------------------------------------------------------------------- DHI
@pytest.mark.parametrize("num_merges,channels,size", [(0, (4, 8), 32), (3, (4, 8, 8, 16, 16), 64)])
def test_dhi_output_shape_width_and_zero_start(num_merges, channels, size):
    dhi = DenseHintInput(hint_channels=3, out_channels=24, num_merges=num_merges, channels=channels)
    out = dhi(torch.rand(2, 3, size, size))
    assert out.shape == (2, 24, size // 2 ** num_merges, size // 2 ** num_merges)
    assert dhi.downsampling_factor == 2 ** num_merges
    # Only the final conv starts at zero, so a fresh DHI outputs exactly zero ...
    assert torch.count_nonzero(dhi.conv_out.weight) == 0 and torch.count_nonzero(dhi.conv_out.bias) == 0
    assert torch.count_nonzero(out) == 0
    assert torch.count_nonzero(dhi.conv_in.weight) > 0
    # ... and the merges are the only places with a normalisation (LayerNorm inside PatchMerge).
    assert sum(isinstance(m, PatchMerge) for m in dhi.modules()) == num_merges
    norms = [m for m in dhi.modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d, torch.nn.LayerNorm))]
    assert len(norms) == num_merges and all(isinstance(m, torch.nn.LayerNorm) for m in norms)
    torch.nn.init.normal_(dhi.conv_out.weight)
    assert torch.count_nonzero(dhi(torch.rand(2, 3, size, size))) > 0


def test_dhi_reference_widths_and_patch_merge_layout():
    assert default_dhi_channels(3) == (16, 32, 64, 128, 256)
    assert default_dhi_channels(0) == (16, 32)
    dhi = DenseHintInput(hint_channels=3, out_channels=320, num_merges=3)
    merges = [m for m in dhi.modules() if isinstance(m, PatchMerge)]
    assert [(m.reduction.in_features, m.reduction.out_features) for m in merges] == [(128, 64), (256, 128), (512, 256)]
    assert dhi.conv_out.in_channels == 256 and dhi.conv_out.out_channels == 320
    # Swin order: the 2x2 block (0,0), (1,0), (0,1), (1,1) becomes the channel groups 0..3.
    pm = PatchMerge(1, 4)
    x = torch.arange(4.0).view(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    captured = {}
    pm.norm.register_forward_hook(lambda m, i, o: captured.setdefault("in", i[0]))
    pm(x)
    assert captured["in"].flatten().tolist() == [0.0, 2.0, 1.0, 3.0]
    with pytest.raises(ValueError):
        DenseHintInput(hint_channels=3, out_channels=8, num_merges=2, channels=(4, 8))


# ----------------------------------------------------------------------------- pixel backbone and hints
def test_pixel_backbone_installs_dhi_at_full_resolution():
    comp = tiny_pixel()
    assert isinstance(comp.controlnet.controlnet_cond_embedding, DenseHintInput)
    assert comp.dhi.config.num_merges == 0 and comp.dhi.config.out_channels == comp.unet.config.block_out_channels[0]
    assert comp.text_embedding.shape == (1, 2, 16) and comp.text_embedding.requires_grad
    assert comp.latent_size == S and comp.latent_channels == 3 and comp.default_guidance_scale == 1.0
    perturb(comp)
    x = torch.randn(2, 3, S, S)
    t = torch.tensor([10, 500])
    text = comp.text_embeddings(2)
    hint_a, hint_b = comp.mask_hint(labels(2, seed=1)), comp.mask_hint(labels(2, seed=2))
    eps_a = comp.predict_eps(x, t, text, comp.control(x, t, text, hint_a))
    eps_b = comp.predict_eps(x, t, text, comp.control(x, t, text, hint_b))
    assert eps_a.shape == x.shape
    assert not torch.allclose(eps_a, eps_b)  # the hint reaches the UNet through the DHI and the ControlNet


def test_hint_channels_rule():
    # RGB + binary: the mask is replicated to 3 channels (the paper's mask hint).
    comp = tiny_pixel(3, 1)
    lab = labels(2, 1)
    hint = comp.mask_hint(lab)
    assert comp.hint_channels == 3 and hint.shape == (2, 3, S, S)
    for c in range(3):
        assert torch.equal(hint[:, c], (lab == 1).float())
    image = torch.rand(2, 3, S, S) * 2 - 1
    assert torch.allclose(comp.image_hint(image), (image + 1) / 2)
    # RGB + 2 classes: one-hot channels, zero-padded.
    comp = tiny_pixel(3, 2)
    lab = labels(2, 2)
    hint = comp.mask_hint(lab)
    assert torch.equal(hint[:, 0], (lab == 1).float()) and torch.equal(hint[:, 1], (lab == 2).float())
    assert torch.count_nonzero(hint[:, 2]) == 0
    # Grey image + 3 classes: the image hint is replicated to 3 channels.
    comp = tiny_pixel(1, 3)
    grey = torch.rand(2, 1, S, S) * 2 - 1
    ih = comp.image_hint(grey)
    assert ih.shape == (2, 3, S, S) and all(torch.allclose(ih[:, c], (grey[:, 0] + 1) / 2) for c in range(3))
    # The sampler accepts labels, K one-hot channels or a ready hint, with the same result.
    lab = labels(2, 3)
    onehot = torch.nn.functional.one_hot(lab, 4)[..., 1:].permute(0, 3, 1, 2).float()
    assert torch.equal(comp.as_mask_hint(lab), comp.as_mask_hint(onehot))
    with pytest.raises(ValueError):
        comp.mask_hint(torch.full((1, S, S), 4))


# ----------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path):
    comp = tiny_pixel()
    perturb(comp)
    x, t = torch.randn(2, 3, S, S), torch.tensor([3, 700])
    hint = comp.mask_hint(labels(2))

    def eps(c):
        with torch.no_grad():
            text = c.text_embeddings(2)
            return c.predict_eps(x, t, text, c.control(x, t, text, hint))

    before = eps(comp)
    comp.save_pretrained(tmp_path / "gen")
    # Saving swaps the DHI out and back: the in-memory model is unchanged.
    assert isinstance(comp.controlnet.controlnet_cond_embedding, DenseHintInput)
    assert torch.equal(eps(comp), before)

    loaded = SiameseComponents.from_pretrained(tmp_path / "gen")
    assert loaded.backbone == "pixel" and loaded.hint_channels == 3 and loaded.resolution == S
    assert torch.equal(eps(loaded), before)
    assert torch.equal(loaded.text_embedding, comp.text_embedding)

    # The sub-folders load as they are with plain diffusers.
    unet, info = UNet2DConditionModel.from_pretrained(tmp_path / "gen" / "unet", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), comp.unet.state_dict().values()))
    cn, info = ControlNetModel.from_pretrained(tmp_path / "gen" / "controlnet", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    # The plain ControlNet's stock hint encoder is a zero placeholder that takes the same hint.
    assert torch.count_nonzero(cn.controlnet_cond_embedding(hint)) == 0
    dhi = DenseHintInput.from_pretrained(tmp_path / "gen" / "dhi")
    assert all(torch.equal(a, b) for a, b in zip(dhi.state_dict().values(), comp.dhi.state_dict().values()))


def test_from_pretrained_missing_or_incomplete_folder_is_one_line_error(tmp_path):
    with pytest.raises(NnaugError) as err:
        SiameseComponents.from_pretrained(tmp_path / "nothing")
    assert "\n" not in str(err.value)
    tiny_pixel().save_pretrained(tmp_path / "gen")
    (tmp_path / "gen" / "dhi" / "config.json").unlink()
    with pytest.raises(NnaugError) as err:
        SiameseComponents.from_pretrained(tmp_path / "gen")
    assert "dhi/config.json" in str(err.value) and "\n" not in str(err.value)


def test_build_pixel_seed_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = tiny_pixel(seed=3), tiny_pixel(seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = tiny_pixel(seed=4)
    assert not torch.equal(a.text_embedding, c.text_embedding)


# ----------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampling_is_deterministic_per_seed(sampler):
    comp = tiny_pixel()
    perturb(comp)
    lab = labels(4, seed=3)

    def run(idx, seeds):
        return sample_images(comp, lab[idx], seeds, comp.make_scheduler(sampler), 3)

    a = run([0, 1], [5, 7])
    b = run([2, 0, 3], [9, 5, 11])
    c = run([1], [7])
    assert a.shape == (2, 3, S, S) and a.min() >= -1 and a.max() <= 1
    # the same seed and mask give the same image in any batch, up to the rounding of batched kernels (the
    # perturbed random network and the clipped-x0 samplers amplify it to ~1e-4)
    assert torch.allclose(a[0], b[1], atol=5e-4)
    assert torch.allclose(a[1], c[0], atol=5e-4)
    assert (a[0] - run([0], [6])[0]).abs().max() > 0.1  # another seed, another image


def test_pixel_sampling_rejects_guidance():
    comp = tiny_pixel()
    with pytest.raises(NnaugError):
        sample_images(comp, labels(1), [0], comp.make_scheduler(), 2, guidance_scale=3.0)
    with pytest.raises(ValueError):
        sample_images(comp, labels(2), [0], comp.make_scheduler(), 2)
