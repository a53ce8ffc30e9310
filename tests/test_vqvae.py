"""VQ-VAE layout, shapes, exactness of the index path, and the EMA quantizer."""

import pytest
import torch

from toau.tokenizer.quantizer import EMAQuantizer, code_perplexity
from toau.tokenizer.vqvae import VQVAE, VQVAEConfig

TINY = VQVAEConfig(width=16, nb_code=32, depth=2)


@pytest.fixture
def trained_tiny() -> VQVAE:
    """A tiny model after one training-mode pass, so its codebook comes from real encoder outputs."""
    torch.manual_seed(0)
    model = VQVAE(TINY).train()
    model(torch.randn(4, 64, 263))
    return model.eval()


def release_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the T2M-GPT HumanML3D release state dict, built from its layout rules."""
    width, dims = 512, 263
    layout = {}

    def conv(name, out_channels, in_channels, kernel):
        layout[f"{name}.weight"] = (out_channels, in_channels, kernel)
        layout[f"{name}.bias"] = (out_channels,)

    def stack(name):
        for block in range(3):
            conv(f"{name}.model.{block}.conv1", width, width, 3)
            conv(f"{name}.model.{block}.conv2", width, width, 1)

    conv("vqvae.encoder.model.0", width, dims, 3)
    for level in (2, 3):
        conv(f"vqvae.encoder.model.{level}.0", width, width, 4)
        stack(f"vqvae.encoder.model.{level}.1")
    conv("vqvae.encoder.model.4", width, width, 3)
    conv("vqvae.decoder.model.0", width, width, 3)
    for level in (2, 3):
        stack(f"vqvae.decoder.model.{level}.0")
        conv(f"vqvae.decoder.model.{level}.2", width, width, 3)
    conv("vqvae.decoder.model.4", width, width, 3)
    conv("vqvae.decoder.model.6", dims, width, 3)
    layout["vqvae.quantizer.codebook"] = (512, 512)
    return layout


def test_release_layout_matches():
    state = VQVAE(VQVAEConfig()).state_dict()
    shapes = {"vqvae." + key: tuple(value.shape) for key, value in state.items()}
    assert len(shapes) == 67
    assert sum(value.numel() for value in state.values()) == 19_698_951
    assert shapes == release_layout()


def test_release_dilations_descend():
    model = VQVAE(VQVAEConfig())
    for stack in (model.encoder.model[2][1], model.decoder.model[3][0]):
        assert [block.conv1.dilation[0] for block in stack.model] == [9, 3, 1]


def test_code_dim_follows_width():
    assert VQVAEConfig(width=128).code_dim == 128
    assert VQVAEConfig(width=128, code_dim=64).code_dim == 64


def test_encode_drops_tail_frames(trained_tiny):
    features = torch.randn(2, 50, 263)
    indices = trained_tiny.encode(features)
    assert indices.shape == (2, 12)
    assert indices.dtype == torch.int64
    assert torch.equal(indices, trained_tiny.encode(features[:, :48]))
    assert trained_tiny.decode(indices).shape == (2, 48, 263)


def test_decode_shape(trained_tiny):
    indices = torch.randint(0, TINY.nb_code, (3, 12))
    assert trained_tiny.decode(indices).shape == (3, 48, 263)


def test_eval_index_path_exact(trained_tiny):
    features = torch.randn(3, 50, 263)
    output = trained_tiny(features)
    indices = trained_tiny.encode(features)
    assert torch.equal(indices, output.indices)
    assert torch.equal(trained_tiny.decode(indices), output.reconstruction)


def test_forward_output_shapes(trained_tiny):
    output = trained_tiny(torch.randn(2, 50, 263))
    assert output.reconstruction.shape == (2, 48, 263)
    assert output.indices.shape == (2, 12)
    assert output.commitment_loss.shape == ()
    assert 1.0 <= float(output.perplexity) <= TINY.nb_code


def test_gradient_reaches_encoder():
    torch.manual_seed(0)
    model = VQVAE(TINY).train()
    model(torch.randn(2, 16, 263)).reconstruction.sum().backward()
    assert model.encoder.model[0].weight.grad.abs().sum() > 0


def test_decode_rejects_bad_index(trained_tiny):
    with pytest.raises(ValueError, match=r"valid codes are 0\.\.31"):
        trained_tiny.decode(torch.tensor([[0, 32]]))


def test_encode_rejects_short_clip(trained_tiny):
    with pytest.raises(ValueError, match="at least 4"):
        trained_tiny.encode(torch.randn(1, 3, 263))


def test_encode_rejects_wrong_channels(trained_tiny):
    with pytest.raises(ValueError, match=r"expected \(B, T, 263\)"):
        trained_tiny.encode(torch.randn(1, 8, 262))


def test_continuous_model_has_no_codes():
    model = VQVAE(VQVAEConfig(width=16, depth=1, quantize=False)).eval()
    output = model(torch.randn(2, 50, 263))
    assert output.reconstruction.shape == (2, 48, 263)
    assert output.indices is None
    assert float(output.commitment_loss) == 0.0
    assert not any(key.startswith("quantizer") for key in model.state_dict())
    with pytest.raises(RuntimeError, match="quantize=False"):
        model.encode(torch.randn(1, 8, 263))


def test_quantizer_persists_only_codebook():
    assert list(EMAQuantizer(8, 4).state_dict()) == ["codebook"]


def test_quantizer_init_from_batch():
    torch.manual_seed(0)
    quantizer = EMAQuantizer(8, 4).train()
    latents = torch.randn(8, 4)
    quantizer(latents)
    # With as many rows as codes, each code starts as one row, each row then picks its own
    # code, and the EMA update leaves the code where it is.
    distances = torch.cdist(quantizer.codebook, latents)
    assert float(distances.min(dim=1).values.max()) < 1e-5
    assert len(torch.unique(distances.argmin(dim=1))) == 8
    assert bool(quantizer.initialised)


def test_quantizer_init_tiles_small_batch():
    torch.manual_seed(0)
    quantizer = EMAQuantizer(8, 4).train()
    latents = torch.randn(3, 4)
    quantizer(latents)
    nearest = torch.cdist(quantizer.codebook, latents).min(dim=1).values
    assert float(nearest.max()) < 0.05  # noise std is 0.01 / sqrt(4) = 0.005 per channel
    assert len(torch.unique(quantizer.codebook, dim=0)) == 8


def test_quantizer_ema_and_dead_code_reset():
    quantizer = EMAQuantizer(8, 2, decay=0.99).train()
    codebook = torch.zeros(8, 2)
    codebook[:4] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    codebook[4:] = 100.0  # far from every latent, so never chosen
    quantizer.load_state_dict({"codebook": codebook})
    latents = codebook[:4].repeat(5, 1) + 0.1  # 20 vectors, 5 per live code

    output = quantizer(latents)

    assert torch.equal(output.indices, torch.arange(4).repeat(5))
    # Live code: EMA sum 0.99 * c + 0.01 * 5 * (c + 0.1), EMA count 0.99 + 0.01 * 5.
    expected = (0.99 * codebook[:4] + 0.05 * (codebook[:4] + 0.1)) / 1.04
    assert torch.allclose(quantizer.codebook[:4], expected, atol=1e-6)
    # Dead codes: EMA count 0.99 < 1.0, so each is replaced by a batch vector.
    dead = quantizer.codebook[4:]
    assert bool((torch.cdist(dead, latents).min(dim=1).values == 0).all())


def test_loaded_codebook_counts_as_initialised():
    quantizer = EMAQuantizer(8, 2)
    codebook = torch.arange(16.0).view(8, 2)
    quantizer.load_state_dict({"codebook": codebook})
    assert bool(quantizer.initialised)
    assert torch.equal(quantizer.ema_sum, codebook)
    assert torch.equal(quantizer.ema_count, torch.ones(8))


def test_eval_quantizer_leaves_codebook():
    torch.manual_seed(0)
    quantizer = EMAQuantizer(8, 4)
    quantizer.load_state_dict({"codebook": torch.randn(8, 4)})
    before = quantizer.codebook.clone()
    output = quantizer.eval()(torch.randn(30, 4))
    assert torch.equal(quantizer.codebook, before)
    assert torch.equal(output.quantized, before[output.indices])


def test_perplexity_bounds():
    assert float(code_perplexity(torch.full((16,), 3))) == pytest.approx(16.0)
    assert float(code_perplexity(torch.tensor([0, 7, 0, 0]))) == pytest.approx(1.0)
