"""Motion packet: the bytes that the edge device sends, VQ-VAE codebook indices plus a small header.

Byte layout, version 1. Integers are unsigned and big-endian.

| Offset | Size | Field            | Value                                                       |
|-------:|-----:|------------------|-------------------------------------------------------------|
|      0 |    4 | magic            | b"TOAU"                                                     |
|      4 |    1 | version          | 1                                                           |
|      5 |    1 | payload_kind     | 0 = fixed-width packing, 1 = range-coded (`entropy`)        |
|      6 |    1 | fps              | feature frames per second, 1..255 (20 for HumanML3D)        |
|      7 |    1 | frames_per_index | feature frames per index, 1..255 (4 for the VQ-VAE)         |
|      8 |    2 | codebook_size    | K, 2..65535                                                 |
|     10 |    1 | bits_per_index   | ceil(log2 K), 9 for K = 512                                 |
|     11 |    4 | index_count      | N, at most the decoder's max_indices                        |
|     15 |    4 | frame_count      | feature frames covered, within frames_per_index of N * that |
|     19 |    8 | codebook_hash    | `codebook_hash` of the codebook and normalisation stats     |
|     27 |    P | payload          | see below                                                   |
|   27+P |    4 | crc32            | zlib.crc32 of bytes 0 .. 27+P-1                             |

Payload, fixed kind: the N indices at bits_per_index bits each, most significant bit
first, with the last byte zero-padded, so P = ceil(N * bits_per_index / 8).
Payload, entropy kind: the 8-byte hash of the `IndexModel` used, followed by the
range-coder stream of `toau.channel.entropy.encode`.

`decode_packet` treats its input as untrusted. It checks the header fields in order,
then the total length, then the CRC, then the codebook and model hashes, then the
payload. The structural fields come before the CRC because they bound the memory
and determine where the payload ends. Every failure raises a `PacketError` subclass whose
message names the field and its value.
"""

import enum
import hashlib
import operator
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from toau.channel import entropy
from toau.channel.entropy import IndexModel

MAGIC = b"TOAU"
VERSION = 1
HEADER_FORMAT = ">4sBBBBHBII8s"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)  # 27 bytes
CRC_SIZE = 4
HASH_SIZE = 8
MIN_CODEBOOK_SIZE = 2
MAX_CODEBOOK_SIZE = 0xFFFF
DEFAULT_CODEBOOK_SIZE = 512
DEFAULT_FRAMES_PER_INDEX = 4
# 3.6 hours of motion at 20 fps and 4 frames per index. Decoding allocates 8 bytes per index.
DEFAULT_MAX_INDICES = 1 << 16
MAX_INDEX_COUNT = 0xFFFFFFFF  # the uint32 field


class PayloadKind(enum.IntEnum):
    FIXED = 0  # fixed-width packing at bits_per_index bits per index
    ENTROPY = 1  # adaptive range coding with an IndexModel


_PAYLOAD_KIND_VALUES = frozenset(kind.value for kind in PayloadKind)
_CORRUPT = "The packet is corrupt or was not made by encode_packet."


# ---------------------------------------------------------------- errors


class PacketError(ValueError):
    """Bytes that are not a valid motion packet. `field` names the part of the packet that failed."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class TruncatedPacketError(PacketError):
    """Fewer bytes than the header fields require."""


class OversizedPacketError(PacketError):
    """More bytes than the header fields allow, or more indices than the decoder accepts."""


class PacketVersionError(PacketError):
    """A format version that this decoder does not read."""


class PacketFieldError(PacketError):
    """A header field with an invalid value, or one inconsistent with another field."""


class PacketChecksumError(PacketError):
    """A CRC32 mismatch: the bytes changed after encoding."""


class CodebookMismatchError(PacketError):
    """A packet made with another codebook or other normalisation statistics than the decoder's."""


class EntropyModelMismatchError(PacketError):
    """A range-coded packet whose index model the decoder does not have."""


class PacketPayloadError(PacketError):
    """Payload bits that do not decode to valid indices."""


# ---------------------------------------------------------------- helpers


def bits_per_index(codebook_size: int) -> int:
    """Return ceil(log2 K), the fixed width of one index (9 for K = 512)."""
    return (codebook_size - 1).bit_length()


def fixed_payload_size(index_count: int, bits: int) -> int:
    """Return the bytes of a fixed-width payload: ceil(N * bits / 8)."""
    return (index_count * bits + 7) // 8


def packet_overhead(kind: PayloadKind | str = PayloadKind.FIXED) -> int:
    """Return the bytes a packet adds to its coded indices: header and CRC, plus the model hash if range-coded."""
    kind = _as_kind(kind)
    extra = entropy.MODEL_HASH_SIZE if kind is PayloadKind.ENTROPY else 0
    return HEADER_SIZE + CRC_SIZE + extra


def codebook_hash(codebook: np.ndarray, mean: np.ndarray, std: np.ndarray) -> bytes:
    """Hash codebook (K, D) and normalisation mean and std (F,) to 8 bytes.

    SHA-256 over the shapes and the little-endian float32 values, truncated, so equal
    arrays hash equal on every platform whatever their dtype or memory order.
    """
    codebook, mean, std = np.asarray(codebook), np.asarray(mean), np.asarray(std)
    if codebook.ndim != 2:
        raise ValueError(f"codebook must be 2-D (K, D), got shape {codebook.shape}")
    if mean.ndim != 1 or mean.shape != std.shape:
        raise ValueError(f"mean and std must be 1-D with equal shapes (F,), got {mean.shape} and {std.shape}")
    digest = hashlib.sha256(b"toau.codebook")
    for array in (codebook, mean, std):
        values = np.ascontiguousarray(array, dtype="<f4")
        if not np.isfinite(values).all():
            raise ValueError("codebook, mean and std must be finite, but contain NaN or inf")
        digest.update(struct.pack("<B", values.ndim) + struct.pack(f"<{values.ndim}I", *values.shape))
        digest.update(values.tobytes())
    return digest.digest()[:HASH_SIZE]


def pack_indices(indices: np.ndarray, bits: int) -> bytes:
    """Pack indices (N,) into N * bits bits, most significant bit first, the last byte zero-padded."""
    indices = np.asarray(indices, dtype=np.int64)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    bit_matrix = ((indices[:, None] >> shifts) & 1).astype(np.uint8)  # (N, bits)
    return np.packbits(bit_matrix.reshape(-1)).tobytes()


def unpack_indices(payload: bytes, count: int, bits: int) -> np.ndarray:
    """Unpack indices (count,) int64 from `pack_indices` output. The caller checks len(payload) first."""
    bit_stream = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
    if bit_stream[count * bits :].any():
        raise PacketPayloadError(
            "payload", f"payload padding bits after the {count * bits} index bits are not zero. {_CORRUPT}"
        )
    bit_matrix = bit_stream[: count * bits].reshape(count, bits).astype(np.int64)
    weights = np.int64(1) << np.arange(bits - 1, -1, -1, dtype=np.int64)
    return bit_matrix @ weights


def _as_kind(kind: PayloadKind | str | int) -> PayloadKind:
    if isinstance(kind, str):
        try:
            return PayloadKind[kind.upper()]
        except KeyError:
            raise ValueError(f"payload kind {kind!r} is unknown, use 'fixed' or 'entropy'") from None
    return PayloadKind(kind)


# ---------------------------------------------------------------- packet


@dataclass(eq=False)
class MotionPacket:
    """Codebook indices (N,) int64 of one motion clip with the metadata the cloud needs to decode them.

    frame_count is the number of feature frames the indices cover: N * frames_per_index,
    or the clip's own frame count, which must differ from that by less than
    frames_per_index. model_hash identifies the IndexModel of a range-coded packet.
    """

    indices: np.ndarray
    fps: int
    frame_count: int
    codebook_size: int
    codebook_hash: bytes
    frames_per_index: int = DEFAULT_FRAMES_PER_INDEX
    payload_kind: PayloadKind = PayloadKind.FIXED
    model_hash: bytes | None = None

    def __post_init__(self):
        self.indices = np.asarray(self.indices)
        self.payload_kind = _as_kind(self.payload_kind)
        # operator.index rejects floats such as fps=29.97, which the one-byte field cannot store.
        for name in ("fps", "frame_count", "codebook_size", "frames_per_index"):
            setattr(self, name, operator.index(getattr(self, name)))

    @property
    def index_count(self) -> int:
        return int(self.indices.shape[0])


def _frame_count_bounds(index_count: int, frames_per_index: int) -> tuple[int, int]:
    """Return the inclusive range of frame counts that index_count indices can cover."""
    center = index_count * frames_per_index
    return max(0, center - frames_per_index + 1), center + frames_per_index - 1


def payload_bits(
    indices: np.ndarray,
    kind: PayloadKind | str,
    model: IndexModel | None = None,
    *,
    codebook_size: int | None = None,
) -> int:
    """Return the bits that the indices (N,) take in a payload of this kind, before byte padding.

    Fixed: N * ceil(log2 K). Entropy: 8 times the range-coded bytes, without the 8-byte
    model hash. K is `codebook_size`, else the model's, else DEFAULT_CODEBOOK_SIZE.
    """
    kind = _as_kind(kind)
    if codebook_size is None:
        codebook_size = model.codebook_size if model is not None else DEFAULT_CODEBOOK_SIZE
    if model is not None and model.codebook_size != codebook_size:
        raise ValueError(f"codebook_size is {codebook_size}, but the model codes K = {model.codebook_size}")
    indices = entropy.check_indices(indices, codebook_size, "indices")
    if kind is PayloadKind.FIXED:
        return indices.size * bits_per_index(codebook_size)
    if model is None:
        raise ValueError("payload kind 'entropy' needs model=, the IndexModel to code with")
    return 8 * len(entropy.encode(indices, model))


# ---------------------------------------------------------------- encode


def _check_for_encoding(packet: MotionPacket, model: IndexModel | None) -> np.ndarray:
    """Check that the packet can be encoded and return its indices as int64, else raise ValueError."""
    k = packet.codebook_size
    if not MIN_CODEBOOK_SIZE <= k <= MAX_CODEBOOK_SIZE:
        raise ValueError(f"codebook_size is {k}, outside {MIN_CODEBOOK_SIZE}..{MAX_CODEBOOK_SIZE}")
    indices = entropy.check_indices(packet.indices, k, "indices")
    if indices.size > MAX_INDEX_COUNT:
        raise ValueError(f"{indices.size} indices do not fit the uint32 index_count. Split the clip.")
    for name in ("fps", "frames_per_index"):
        value = getattr(packet, name)
        if not 1 <= value <= 255:
            raise ValueError(f"{name} is {value}, outside 1..255 (one byte)")
    low, high = _frame_count_bounds(indices.size, packet.frames_per_index)
    if not low <= packet.frame_count <= high:
        raise ValueError(
            f"frame_count is {packet.frame_count}, but {indices.size} indices at {packet.frames_per_index} frames "
            f"per index cover {low}..{high} frames"
        )
    if not isinstance(packet.codebook_hash, bytes) or len(packet.codebook_hash) != HASH_SIZE:
        raise ValueError(f"codebook_hash must be {HASH_SIZE} bytes from codebook_hash(), got {packet.codebook_hash!r}")
    if packet.payload_kind is PayloadKind.ENTROPY:
        if model is None:
            raise ValueError("payload_kind is ENTROPY, so encode_packet needs model=, the IndexModel to code with")
        if model.codebook_size != k:
            raise ValueError(f"codebook_size is {k}, but the model codes K = {model.codebook_size}")
        if packet.model_hash is not None and packet.model_hash != model.hash:
            raise ValueError(
                f"packet.model_hash is {packet.model_hash.hex()}, but model= has hash {model.hash.hex()}"
            )
    return indices


def encode_packet(packet: MotionPacket, *, model: IndexModel | None = None) -> bytes:
    """Serialise a packet to bytes in the layout of the module docstring.

    `model` is the IndexModel for payload_kind ENTROPY and is ignored for FIXED.
    Raises ValueError when a field is out of range or the fields disagree.
    """
    indices = _check_for_encoding(packet, model)
    bits = bits_per_index(packet.codebook_size)
    header = struct.pack(
        HEADER_FORMAT,
        MAGIC,
        VERSION,
        packet.payload_kind,
        packet.fps,
        packet.frames_per_index,
        packet.codebook_size,
        bits,
        indices.size,
        packet.frame_count,
        packet.codebook_hash,
    )
    if packet.payload_kind is PayloadKind.FIXED:
        payload = pack_indices(indices, bits)
    else:
        payload = model.hash + entropy.encode(indices, model)
    body = header + payload
    return body + struct.pack(">I", zlib.crc32(body))


# ---------------------------------------------------------------- decode


def _check_header(fields: tuple, size: int, max_indices: int) -> None:
    """Check the header fields in layout order and the total packet size they imply."""
    magic, version, kind, fps, frames_per_index, k, bits, count, frame_count, _ = fields
    if magic != MAGIC:
        raise PacketFieldError("magic", f"magic is {magic!r}, expected {MAGIC!r}. The bytes are not a TOAU packet.")
    if version != VERSION:
        raise PacketVersionError(
            "version", f"version is {version}, but this decoder reads version {VERSION}. Update toau on the older side."
        )
    if kind not in _PAYLOAD_KIND_VALUES:
        raise PacketFieldError(
            "payload_kind", f"payload_kind is {kind}, expected 0 (fixed) or 1 (entropy). {_CORRUPT}"
        )
    if fps == 0:
        raise PacketFieldError("fps", f"fps is 0, expected 1..255. {_CORRUPT}")
    if frames_per_index == 0:
        raise PacketFieldError("frames_per_index", f"frames_per_index is 0, expected 1..255. {_CORRUPT}")
    if k < MIN_CODEBOOK_SIZE:
        raise PacketFieldError(
            "codebook_size", f"codebook_size is {k}, outside {MIN_CODEBOOK_SIZE}..{MAX_CODEBOOK_SIZE}. {_CORRUPT}"
        )
    if kind == PayloadKind.ENTROPY and k > entropy.MAX_CODEBOOK_SIZE:
        raise PacketFieldError(
            "codebook_size",
            f"codebook_size is {k}, above the {entropy.MAX_CODEBOOK_SIZE} that range-coded packets support. "
            f"{_CORRUPT}",
        )
    if bits != bits_per_index(k):
        raise PacketFieldError(
            "bits_per_index",
            f"bits_per_index is {bits}, but codebook_size {k} needs {bits_per_index(k)}. {_CORRUPT}",
        )
    if count > max_indices:
        raise OversizedPacketError(
            "index_count",
            f"index_count is {count}, above max_indices={max_indices}. Split the clip or raise max_indices.",
        )
    low, high = _frame_count_bounds(count, frames_per_index)
    if not low <= frame_count <= high:
        raise PacketFieldError(
            "frame_count",
            f"frame_count is {frame_count}, but {count} indices at {frames_per_index} frames per index "
            f"cover {low}..{high} frames. {_CORRUPT}",
        )

    if kind == PayloadKind.FIXED:
        min_size = max_size = HEADER_SIZE + fixed_payload_size(count, bits) + CRC_SIZE
    else:
        min_size = HEADER_SIZE + entropy.MODEL_HASH_SIZE + 1 + CRC_SIZE
        max_size = HEADER_SIZE + entropy.MODEL_HASH_SIZE + entropy.max_coded_size(count) + CRC_SIZE
    if size < min_size:
        raise TruncatedPacketError(
            "payload", f"packet has {size} bytes, but its header (index_count {count}) needs at least {min_size}. "
            "It was truncated."
        )
    if size > max_size:
        raise OversizedPacketError(
            "payload", f"packet has {size} bytes, but its header (index_count {count}) allows at most {max_size}. "
            "It has extra bytes."
        )


def decode_packet(
    data: bytes,
    *,
    expected_hash: bytes | None = None,
    max_indices: int = DEFAULT_MAX_INDICES,
    model: IndexModel | None = None,
) -> MotionPacket:
    """Parse and check untrusted packet bytes, and return the packet with indices (N,) int64 in [0, K).

    expected_hash: the decoder's `codebook_hash`. A packet with another hash raises
    CodebookMismatchError, and None skips the check.
    max_indices: the largest index_count accepted. It bounds memory and time before
    anything is allocated.
    model: the IndexModel that range-coded packets need. Its hash must match the packet's.
    Raises a PacketError subclass for every invalid input.
    """
    if expected_hash is not None and len(expected_hash) != HASH_SIZE:
        raise ValueError(f"expected_hash must be {HASH_SIZE} bytes from codebook_hash(), got {len(expected_hash)}")
    if not 0 <= max_indices <= MAX_INDEX_COUNT:
        raise ValueError(f"max_indices is {max_indices}, outside 0..{MAX_INDEX_COUNT}")
    data = memoryview(data).cast("B")
    size = len(data)
    if size < HEADER_SIZE + CRC_SIZE:
        raise TruncatedPacketError(
            "header", f"packet has {size} bytes, fewer than the {HEADER_SIZE + CRC_SIZE} of header and CRC. "
            "It was truncated."
        )

    fields = struct.unpack_from(HEADER_FORMAT, data)
    _check_header(fields, size, max_indices)
    _, _, kind, fps, frames_per_index, k, bits, count, frame_count, packet_hash = fields
    kind = PayloadKind(kind)

    (stored_crc,) = struct.unpack_from(">I", data, size - CRC_SIZE)
    computed_crc = zlib.crc32(data[: size - CRC_SIZE])
    if stored_crc != computed_crc:
        raise PacketChecksumError(
            "crc32", f"crc32 is {stored_crc:08x}, but the bytes give {computed_crc:08x}. The packet was corrupted "
            "in transit, so request it again."
        )

    if expected_hash is not None and packet_hash != expected_hash:
        raise CodebookMismatchError(
            "codebook_hash",
            f"codebook_hash is {packet_hash.hex()}, but this decoder has {expected_hash.hex()}. Edge and cloud use "
            "different codebooks or normalisation statistics, so load the same VQ-VAE checkpoint on both.",
        )

    payload = bytes(data[HEADER_SIZE : size - CRC_SIZE])
    model_hash = None
    if kind is PayloadKind.FIXED:
        indices = unpack_indices(payload, count, bits)
    else:
        model_hash = payload[: entropy.MODEL_HASH_SIZE]
        if model is None or model.hash != model_hash or model.codebook_size != k:
            have = "no model" if model is None else f"model {model.hash.hex()} for K = {model.codebook_size}"
            raise EntropyModelMismatchError(
                "model_hash",
                f"model_hash is {model_hash.hex()} for codebook_size {k}, but this decoder has {have}. "
                "Load the IndexModel that the edge used, or have the edge send fixed-width packets.",
            )
        try:
            indices = entropy.decode(payload[entropy.MODEL_HASH_SIZE :], count, model)
        except entropy.EntropyDecodeError as error:
            raise PacketPayloadError("payload", f"range-coded payload is invalid: {error}") from error

    if count and int(indices.max()) >= k:
        bad = int(np.argmax(indices >= k))
        raise PacketPayloadError(
            "indices",
            f"indices[{bad}] is {int(indices[bad])}, but codebook_size is {k}. The sender's encoder is broken.",
        )
    return MotionPacket(
        indices=indices,
        fps=fps,
        frame_count=frame_count,
        codebook_size=k,
        codebook_hash=packet_hash,
        frames_per_index=frames_per_index,
        payload_kind=kind,
        model_hash=model_hash,
    )
