"""The sd15 backbone on a tiny Stable-Diffusion-shaped folder built here (no hub, no real weights)."""
from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from nnaug.errors import NnaugError
from nnaug.generators.siamese.backbone import SiameseComponents
from nnaug.generators.siamese.building import load_sd15
from nnaug.generators.siamese.dhi import DenseHintInput
from nnaug.generators.siamese.objective import siamese_loss, trainable_parameters
from nnaug.generators.siamese.sampling import sample_images

S = 32  # image side; the tiny VAE halves it (one PatchMerge in the DHI)
TOKENS = 16


def write_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer from a tiny vocab.json + merges.txt (letters, '.', and 'polyp')."""
    folder.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + ".":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    merges = ["p o", "po l", "pol y", "poly p</w>"]
    for merge in merges:
        vocab[merge.replace(" ", "")] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": TOKENS}))


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-sd15")
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=S // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=S,
    ).save_pretrained(root / "vae")
    CLIPTextModel(CLIPTextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )).save_pretrained(root / "text_encoder")
    write_tokenizer(root / "tokenizer")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(root / "scheduler")
    return root


def load(folder, **kwargs) -> SiameseComponents:
    return load_sd15(folder, mask_channels=1, image_channels=kwargs.pop("image_channels", 3), resolution=S,
                     dhi_channels=(4, 8, 16), **kwargs)


def batch(b=2, seed=0, channels=3):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(b, channels, S, S, generator=g) * 2 - 1,
            "label": (torch.rand(b, S, S, generator=g) > 0.5).long()}


def test_load_sd15_train_step_and_sample(sd_folder):
    comp = load(sd_folder)
    assert comp.backbone == "sd15" and comp.hint_channels == 3 and comp.latent_size == S // 2
    assert isinstance(comp.dhi, DenseHintInput) and comp.dhi.config.num_merges == 1
    assert comp.noise_scheduler.config.beta_schedule == "scaled_linear"
    assert comp.noise_scheduler.config.beta_start == 0.00085 and comp.noise_scheduler.config.beta_end == 0.012
    assert comp.prompt == "A photo of a polyp." and comp.prompt_dropout == 0.05
    assert comp.default_guidance_scale == 9.0

    # What trains: ControlNet (with DHI) and the UNet decoder; encoder, mid block, time embedding, VAE, CLIP frozen.
    params = {id(p) for p in trainable_parameters(comp)}
    unet = comp.unet
    for module in (unet.up_blocks, unet.conv_norm_out, unet.conv_out, comp.controlnet, comp.dhi):
        assert all(id(p) in params and p.requires_grad for p in module.parameters())
    for module in (unet.conv_in, unet.time_embedding, unet.down_blocks, unet.mid_block, comp.vae, comp.text_encoder):
        assert not any(p.requires_grad or id(p) in params for p in module.parameters())

    # Text: CLIP embedding of the prompt; dropout replaces it with the empty prompt's.
    cond, uncond = comp.text_embeddings(2), comp.text_embeddings(2, unconditional=True)
    assert cond.shape == (2, TOKENS, 32) and not torch.allclose(cond, uncond)
    assert torch.equal(comp.text_embeddings(2, drop_prob=1.0), uncond)

    out = siamese_loss(comp, batch(), step=9, max_steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in unet.up_blocks.parameters())
    assert all(p.grad is None for p in unet.down_blocks.parameters())
    assert all(p.grad is None for p in comp.vae.parameters())
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in comp.controlnet.parameters())

    images = sample_images(comp, batch()["label"], [1, 2], comp.make_scheduler(), 2)  # guidance 9
    assert images.shape == (2, 3, S, S) and images.min() >= -1 and images.max() <= 1


def test_grey_images_on_sd15(sd_folder):
    comp = load(sd_folder, image_channels=1)
    assert comp.image_hint(batch(channels=1)["image"]).shape == (2, 3, S, S)
    out = siamese_loss(comp, batch(channels=1), step=1, max_steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    images = sample_images(comp, batch()["label"][:1], [3], comp.make_scheduler(), 2, guidance_scale=1.0)
    assert images.shape == (1, 1, S, S)


def test_sd15_save_load_round_trip(sd_folder, tmp_path):
    comp = load(sd_folder)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in comp.controlnet.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    lab = batch()["label"]

    def images(c):
        return sample_images(c, lab, [4, 5], c.make_scheduler(), 2)

    before = images(comp)
    comp.save_pretrained(tmp_path / "gen")
    assert not (tmp_path / "gen" / "vae").exists()  # frozen parts are read from the base model
    loaded = SiameseComponents.from_pretrained(tmp_path / "gen")
    assert loaded.base_model == str(sd_folder.resolve())
    assert torch.allclose(images(loaded), before, atol=1e-6)

    comp.save_pretrained(tmp_path / "full", include_frozen=True)
    moved = tmp_path / "moved"
    shutil.copytree(sd_folder, moved)
    meta = json.loads((tmp_path / "gen" / "siamese.json").read_text())
    meta["base_model"] = str(tmp_path / "gone")
    (tmp_path / "gen" / "siamese.json").write_text(json.dumps(meta))
    with pytest.raises(NnaugError) as err:
        SiameseComponents.from_pretrained(tmp_path / "gen")
    assert "\n" not in str(err.value)
    assert torch.allclose(images(SiameseComponents.from_pretrained(tmp_path / "gen", base_model=moved)), before, atol=1e-6)
    assert torch.allclose(images(SiameseComponents.from_pretrained(tmp_path / "full")), before, atol=1e-6)


def test_missing_or_incomplete_folder_is_one_line_error(sd_folder, tmp_path):
    with pytest.raises(NnaugError) as err:
        load(tmp_path / "no-such-folder")
    assert "not found" in str(err.value) and "\n" not in str(err.value)

    partial = tmp_path / "partial"
    shutil.copytree(sd_folder, partial)
    shutil.rmtree(partial / "vae")
    with pytest.raises(NnaugError) as err:
        load(partial)
    assert "vae/" in str(err.value) and "\n" not in str(err.value)

    no_weights = tmp_path / "no-weights"
    shutil.copytree(sd_folder, no_weights)
    for f in (no_weights / "unet").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(NnaugError) as err:
        load(no_weights)
    assert "unet" in str(err.value) and "\n" not in str(err.value)
