"""Backbone loading, GGUF caching and motion tokens: tiny models built here, plus the real SmolLM2."""

import json

import pytest
import torch
import transformers

from toau.cloud import llm


@pytest.fixture
def tiny():
    tokenizer = llm.tiny_tokenizer()
    return llm.tiny_llama(tokenizer), tokenizer


@pytest.fixture(scope="module")
def smollm2():
    return llm.load_backbone(llm.SMOLLM2)


# ---------------------------------------------------------------- motion tokens


def test_motion_run_encodes_to_n_ids(tiny):
    model, tokenizer = tiny
    ids = llm.add_motion_tokens(model, tokenizer)
    encoded = tokenizer(llm.MOTION_TOKEN * 7, add_special_tokens=False)["input_ids"]
    assert encoded == [ids[llm.MOTION_TOKEN]] * 7


def test_motion_tokens_grow_full_vocab(tiny):
    model, tokenizer = tiny
    before = model.get_input_embeddings().weight.detach().clone()
    head_before = model.get_output_embeddings().weight.detach().clone()
    text_ids = tokenizer("the person walks", add_special_tokens=False)["input_ids"]

    ids = llm.add_motion_tokens(model, tokenizer)
    after = model.get_input_embeddings().weight
    new_ids = sorted(ids.values())

    assert after.shape[0] == before.shape[0] + 3
    assert new_ids == list(range(before.shape[0], before.shape[0] + 3))
    assert torch.equal(after[: before.shape[0]], before)
    assert torch.equal(model.get_output_embeddings().weight[: before.shape[0]], head_before)
    assert torch.allclose(after[new_ids], before.mean(dim=0).expand(3, -1))
    assert torch.allclose(model.get_output_embeddings().weight[new_ids], head_before.mean(dim=0).expand(3, -1))
    assert tokenizer("the person walks", add_special_tokens=False)["input_ids"] == text_ids


def test_motion_tokens_use_spare_rows():
    tokenizer = llm.tiny_tokenizer()
    vocab = len(tokenizer)
    model = llm.tiny_llama(tokenizer, spare_rows=8)
    before = model.get_input_embeddings().weight.detach().clone()

    ids = llm.add_motion_tokens(model, tokenizer)
    after = model.get_input_embeddings().weight

    assert after.shape == before.shape
    assert sorted(ids.values()) == [vocab, vocab + 1, vocab + 2]
    assert torch.allclose(after[vocab : vocab + 3], before[:vocab].mean(dim=0).expand(3, -1))
    assert torch.equal(after[vocab + 3 :], before[vocab + 3 :])


def test_add_motion_tokens_twice_is_noop(tiny):
    model, tokenizer = tiny
    first = llm.add_motion_tokens(model, tokenizer)
    weights = model.get_input_embeddings().weight.detach().clone()
    second = llm.add_motion_tokens(model, tokenizer)
    assert second == first
    assert torch.equal(model.get_input_embeddings().weight, weights)


def test_motion_tokens_without_rows_rejected(tiny):
    model, tokenizer = tiny
    llm.add_motion_tokens(model, tokenizer)
    bare_model = llm.tiny_llama(llm.tiny_tokenizer())
    with pytest.raises(ValueError, match="already has the motion tokens"):
        llm.add_motion_tokens(bare_model, tokenizer)


# ---------------------------------------------------------------- loading


def test_load_local_folder_frozen(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    ids = torch.tensor([tokenizer("the person jumps", add_special_tokens=False)["input_ids"]])

    loaded, loaded_tokenizer = llm.load_backbone(str(tmp_path))

    assert not any(parameter.requires_grad for parameter in loaded.parameters())
    assert not loaded.training
    assert llm.MOTION_TOKEN in loaded_tokenizer.get_vocab()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        actual = loaded(input_ids=ids).logits[..., : expected.shape[-1]]
    assert torch.allclose(actual, expected, atol=1e-6)


def test_missing_model_names_it():
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-model"):
        llm.load_pretrained("no-such-org/no-such-model")


def test_qwen3_vl_text_model_matches(tmp_path):
    tokenizer = llm.tiny_tokenizer()
    text = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
        rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1], "mrope_interleaved": True,
        },
    )
    vision = dict(
        depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
        deepstack_visual_indexes=[0], patch_size=4, spatial_merge_size=1, temporal_patch_size=1,
    )
    config = transformers.Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)
    torch.manual_seed(0)
    reference = transformers.Qwen3VLForConditionalGeneration(config).eval()
    reference.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    ids = torch.tensor([tokenizer("what is the person doing?", add_special_tokens=False)["input_ids"]] * 2)

    model, _ = llm.load_pretrained(str(tmp_path))

    assert isinstance(model, transformers.Qwen3ForCausalLM)
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        actual = model(input_ids=ids).logits
    assert torch.allclose(actual, expected, atol=1e-5)


# ---------------------------------------------------------------- GGUF cache


def test_gguf_cache_rebuilds_on_change(tmp_path, monkeypatch):
    conversions = []

    def fake_dequantise(path):
        conversions.append(path.read_bytes())
        tokenizer = llm.tiny_tokenizer()
        return llm.tiny_llama(tokenizer), tokenizer

    monkeypatch.setattr(llm, "_dequantise_gguf", fake_dequantise)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"first")
    folder = tmp_path / "converted"

    llm.convert_gguf(gguf, folder)
    llm.convert_gguf(gguf, folder)
    assert conversions == [b"first"]

    gguf.write_bytes(b"second")
    llm.convert_gguf(gguf, folder)
    assert conversions == [b"first", b"second"]
    marker = json.loads((folder / llm.SOURCE_MARKER).read_text())
    assert marker["sha256"] == llm.sha256_file(gguf)
    assert (folder / "model.safetensors").is_file()


def test_gguf_cache_keeps_concurrent_result(tmp_path, monkeypatch):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"weights")
    folder = tmp_path / "converted"

    def dequantise_while_another_process_finishes(path):
        folder.mkdir()
        (folder / "theirs").write_text("in use")
        marker = {"sha256": llm.sha256_file(path)}
        (folder / llm.SOURCE_MARKER).write_text(json.dumps(marker))
        tokenizer = llm.tiny_tokenizer()
        return llm.tiny_llama(tokenizer), tokenizer

    monkeypatch.setattr(llm, "_dequantise_gguf", dequantise_while_another_process_finishes)

    assert llm.convert_gguf(gguf, folder) == folder
    assert (folder / "theirs").is_file()
    assert [path.name for path in tmp_path.iterdir() if ".tmp-" in path.name] == []


def test_smollm2_gguf_in_wheel():
    path = llm.smollm2_gguf_path()
    assert path.name == llm.SMOLLM2_GGUF
    assert path.stat().st_size > 50_000_000


# ---------------------------------------------------------------- real SmolLM2


def test_smollm2_motion_rows(smollm2):
    model, tokenizer = smollm2
    # SmolLM2 ships no spare embedding rows: 49152 tokens, 49152 rows, so three rows are added.
    assert len(tokenizer) == 49152 + 3
    assert model.get_input_embeddings().weight.shape == (49152 + 3, 576)
    motion_id = tokenizer.convert_tokens_to_ids(llm.MOTION_TOKEN)
    assert tokenizer(llm.MOTION_TOKEN * 5, add_special_tokens=False)["input_ids"] == [motion_id] * 5


def test_smollm2_answers_in_english(smollm2, one_thread):
    model, tokenizer = smollm2
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
