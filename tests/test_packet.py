"""Tests for the motion packet format: sizes, round trips, and checks on untrusted bytes."""

import struct
import time
import zlib
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toau.channel.entropy import IndexModel
from toau.channel.packet import (
    CRC_SIZE,
    HEADER_FORMAT,
    HEADER_SIZE,
    CodebookMismatchError,
    EntropyModelMismatchError,
    MotionPacket,
    OversizedPacketError,
    PacketChecksumError,
    PacketError,
    PacketFieldError,
    PacketPayloadError,
    PacketVersionError,
    PayloadKind,
    TruncatedPacketError,
    bits_per_index,
    codebook_hash,
    decode_packet,
    encode_packet,
    fixed_payload_size,
    pack_indices,
    packet_overhead,
    payload_bits,
    unpack_indices,
)

HEADER_FIELDS = (
    "magic",
    "version",
    "payload_kind",
    "fps",
    "frames_per_index",
    "codebook_size",
    "bits_per_index",
    "index_count",
    "frame_count",
    "codebook_hash",
)
CODEBOOK_SIZES = [2, 3, 512, 1024, 4096]


def make_hash(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return codebook_hash(rng.normal(size=(512, 16)), rng.normal(size=263), rng.uniform(0.5, 2.0, size=263))


HASH = make_hash()


def make_packet(indices, codebook_size=512, kind=PayloadKind.FIXED) -> MotionPacket:
    indices = np.asarray(indices, dtype=np.int64)
    return MotionPacket(indices, 20, 4 * indices.size, codebook_size, HASH, payload_kind=kind)


def uniform_model(codebook_size: int) -> IndexModel:
    return IndexModel.fit([], codebook_size)


def with_crc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def rewrite_header(data: bytes, **changes) -> bytes:
    """Return the packet with header fields replaced and the CRC recomputed, as a deliberate sender would."""
    fields = dict(zip(HEADER_FIELDS, struct.unpack_from(HEADER_FORMAT, data)))
    fields.update(changes)
    header = struct.pack(HEADER_FORMAT, *fields.values())
    return with_crc(header + data[HEADER_SIZE:-CRC_SIZE])


def rewrite_payload(data: bytes, payload: bytes) -> bytes:
    return with_crc(data[:HEADER_SIZE] + payload)


def fixed_packet_bytes(indices, codebook_size=512) -> bytes:
    return encode_packet(make_packet(indices, codebook_size))


# ---------------------------------------------------------------- sizes and layout


def test_header_size():
    assert HEADER_SIZE == 27
    assert packet_overhead("fixed") == 31
    assert packet_overhead(PayloadKind.ENTROPY) == 39


@pytest.mark.parametrize(
    ("codebook_size", "bits"),
    [(2, 1), (3, 2), (4, 2), (5, 3), (512, 9), (513, 10), (1024, 10), (4096, 12), (65535, 16)],
)
def test_bits_per_index(codebook_size, bits):
    assert bits_per_index(codebook_size) == bits


def test_twelve_indices_size():
    indices = np.arange(12) * 40
    data = fixed_packet_bytes(indices)
    assert payload_bits(indices, "fixed") == 108
    assert fixed_payload_size(12, 9) == 14
    assert len(data) == HEADER_SIZE + 14 + CRC_SIZE


def test_pack_msb_first():
    assert pack_indices(np.array([1, 2]), 9) == b"\x00\x80\x80"
    assert pack_indices(np.array([511]), 9) == b"\xff\x80"
    assert pack_indices(np.array([1, 0, 1]), 1) == b"\xa0"


def test_unpack_inverts_pack():
    rng = np.random.default_rng(1)
    indices = rng.integers(0, 2**13, 1001)
    assert np.array_equal(unpack_indices(pack_indices(indices, 13), 1001, 13), indices)


def test_header_layout():
    data = fixed_packet_bytes([5, 6, 7])
    assert data[:4] == b"TOAU"
    assert data[4] == 1  # version
    assert data[5] == 0  # fixed kind
    assert data[6] == 20  # fps
    assert data[7] == 4  # frames per index
    assert data[8:10] == (512).to_bytes(2, "big")
    assert data[10] == 9
    assert data[11:15] == (3).to_bytes(4, "big")
    assert data[15:19] == (12).to_bytes(4, "big")
    assert data[19:27] == HASH
    assert data[-4:] == zlib.crc32(data[:-4]).to_bytes(4, "big")


def test_payload_bits_entropy_smaller():
    rng = np.random.default_rng(2)
    indices = rng.choice(512, 2000, p=np.r_[np.full(8, 0.1), np.full(504, 0.2 / 504)])
    model = IndexModel.fit([indices], 512)
    assert payload_bits(indices, "entropy", model) < payload_bits(indices, "fixed")


# ---------------------------------------------------------------- codebook hash


def test_hash_stable():
    rng = np.random.default_rng(3)
    codebook, mean, std = rng.normal(size=(8, 4)), rng.normal(size=263), rng.uniform(1, 2, size=263)
    first = codebook_hash(codebook, mean, std)
    assert len(first) == 8
    assert codebook_hash(codebook.astype(np.float32), mean, std) == first
    assert codebook_hash(np.asfortranarray(codebook), mean, std) == first


def test_hash_detects_changes():
    rng = np.random.default_rng(4)
    codebook, mean, std = rng.normal(size=(8, 4)), rng.normal(size=263), rng.uniform(1, 2, size=263)
    first = codebook_hash(codebook, mean, std)
    changed = std.copy()
    changed[100] += 1e-3
    assert codebook_hash(codebook, mean, changed) != first
    assert codebook_hash(codebook.reshape(4, 8), mean, std) != first
    assert codebook_hash(codebook, std, mean) != first


def test_hash_rejects_nan():
    codebook = np.zeros((4, 2))
    codebook[1, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        codebook_hash(codebook, np.zeros(263), np.ones(263))


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", list(PayloadKind))
@pytest.mark.parametrize("codebook_size", CODEBOOK_SIZES)
def test_round_trip(codebook_size, kind):
    rng = np.random.default_rng(codebook_size)
    model = uniform_model(codebook_size)
    for count in (0, 1, 12, 257):
        indices = rng.integers(0, codebook_size, count)
        packet = MotionPacket(indices, 20, 4 * count + min(count, 3), codebook_size, HASH, payload_kind=kind)
        decoded = decode_packet(encode_packet(packet, model=model), expected_hash=HASH, model=model)
        assert np.array_equal(decoded.indices, indices)
        assert decoded.indices.dtype == np.int64
        assert decoded.fps == 20
        assert decoded.frame_count == packet.frame_count
        assert decoded.codebook_size == codebook_size
        assert decoded.codebook_hash == HASH
        assert decoded.frames_per_index == 4
        assert decoded.payload_kind is kind
        assert decoded.model_hash == (model.hash if kind is PayloadKind.ENTROPY else None)


@settings(max_examples=80, deadline=timedelta(seconds=2))
@given(
    codebook_size=st.integers(2, 65535),
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(0, 400),
    fps=st.integers(1, 255),
    frames_per_index=st.integers(1, 255),
)
def test_round_trip_fixed_random(codebook_size, seed, count, fps, frames_per_index):
    indices = np.random.default_rng(seed).integers(0, codebook_size, count)
    frame_count = count * frames_per_index
    packet = MotionPacket(indices, fps, frame_count, codebook_size, HASH, frames_per_index=frames_per_index)
    data = encode_packet(packet)
    decoded = decode_packet(data)
    assert len(data) == HEADER_SIZE + fixed_payload_size(count, bits_per_index(codebook_size)) + CRC_SIZE
    assert np.array_equal(decoded.indices, indices)
    assert decoded.fps == fps
    assert decoded.frames_per_index == frames_per_index


def test_encode_then_decode_equal_bytes():
    model = uniform_model(512)
    data = encode_packet(make_packet(np.arange(40) * 7 % 512, kind="entropy"), model=model)
    assert encode_packet(decode_packet(data, model=model), model=model) == data


# ---------------------------------------------------------------- encode checks


def test_encode_rejects_out_of_range_index():
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 512\), got values in \[0, 512\]"):
        encode_packet(make_packet([0, 512]))


def test_encode_rejects_frame_count():
    packet = MotionPacket(np.zeros(3, dtype=np.int64), 20, 20, 512, HASH)
    with pytest.raises(ValueError, match=r"frame_count is 20, but 3 indices at 4 frames per index cover 9..15"):
        encode_packet(packet)


def test_encode_rejects_float_fps():
    with pytest.raises(TypeError):
        MotionPacket(np.zeros(3, dtype=np.int64), 29.97, 12, 512, HASH)


def test_encode_entropy_needs_model():
    with pytest.raises(ValueError, match="needs model="):
        encode_packet(make_packet([1, 2], kind="entropy"))


# ---------------------------------------------------------------- typed decode errors


def test_truncated_header():
    data = fixed_packet_bytes([1, 2, 3])
    with pytest.raises(TruncatedPacketError, match="packet has 10 bytes, fewer than the 31") as caught:
        decode_packet(data[:10])
    assert caught.value.field == "header"


def test_truncated_payload():
    data = fixed_packet_bytes(np.arange(12))
    with pytest.raises(TruncatedPacketError, match=r"packet has 44 bytes, but its header \(index_count 12\) needs"):
        decode_packet(data[:-1])


def test_extra_bytes():
    data = fixed_packet_bytes(np.arange(12))
    message = r"packet has 46 bytes, but its header \(index_count 12\) allows at most 45"
    with pytest.raises(OversizedPacketError, match=message):
        decode_packet(data + b"\x00")


def test_too_many_indices():
    data = fixed_packet_bytes(np.arange(100))
    with pytest.raises(OversizedPacketError, match="index_count is 100, above max_indices=50") as caught:
        decode_packet(data, max_indices=50)
    assert caught.value.field == "index_count"


def test_huge_count_small_body():
    # 2**31 indices at one frame per index, followed by a 20-byte body.
    header = struct.pack(HEADER_FORMAT, b"TOAU", 1, 0, 20, 1, 512, 9, 2**31, 2**31, HASH)
    data = with_crc(header + bytes(20))
    started = time.perf_counter()
    with pytest.raises(OversizedPacketError, match="index_count is 2147483648, above max_indices=65536"):
        decode_packet(data)
    with pytest.raises(TruncatedPacketError, match=r"packet has 51 bytes, but its header \(index_count 2147483648\)"):
        decode_packet(data, max_indices=2**32 - 1)
    assert time.perf_counter() - started < 0.5


def test_wrong_magic():
    data = b"JUNK" + fixed_packet_bytes([1, 2])[4:]
    with pytest.raises(PacketFieldError, match="magic is b'JUNK', expected b'TOAU'") as caught:
        decode_packet(data)
    assert caught.value.field == "magic"


def test_wrong_version():
    data = rewrite_header(fixed_packet_bytes([1, 2]), version=2)
    with pytest.raises(PacketVersionError, match="version is 2, but this decoder reads version 1"):
        decode_packet(data)


def test_unknown_payload_kind():
    data = rewrite_header(fixed_packet_bytes([1, 2]), payload_kind=7)
    with pytest.raises(PacketFieldError, match="payload_kind is 7"):
        decode_packet(data)


def test_zero_fps():
    data = rewrite_header(fixed_packet_bytes([1, 2]), fps=0)
    with pytest.raises(PacketFieldError, match="fps is 0"):
        decode_packet(data)


def test_zero_frames_per_index():
    data = rewrite_header(fixed_packet_bytes([1, 2]), frames_per_index=0)
    with pytest.raises(PacketFieldError, match="frames_per_index is 0"):
        decode_packet(data)


def test_codebook_size_too_small():
    data = rewrite_header(fixed_packet_bytes([1, 2]), codebook_size=1, bits_per_index=0)
    with pytest.raises(PacketFieldError, match="codebook_size is 1, outside 2..65535") as caught:
        decode_packet(data)
    assert caught.value.field == "codebook_size"


def test_codebook_size_too_large_for_entropy():
    data = rewrite_header(fixed_packet_bytes([1, 2]), payload_kind=1, codebook_size=20000, bits_per_index=15)
    with pytest.raises(PacketFieldError, match="codebook_size is 20000, above the 16384"):
        decode_packet(data)


def test_bits_inconsistent():
    data = rewrite_header(fixed_packet_bytes([1, 2]), bits_per_index=8)
    with pytest.raises(PacketFieldError, match="bits_per_index is 8, but codebook_size 512 needs 9") as caught:
        decode_packet(data)
    assert caught.value.field == "bits_per_index"


def test_frame_count_inconsistent():
    data = rewrite_header(fixed_packet_bytes(np.arange(12)), frame_count=1000)
    message = r"frame_count is 1000, but 12 indices at 4 frames per index cover 45..51"
    with pytest.raises(PacketFieldError, match=message):
        decode_packet(data)


def test_bad_crc():
    data = bytearray(fixed_packet_bytes(np.arange(12)))
    data[HEADER_SIZE + 3] ^= 0x10
    stored = int.from_bytes(data[-4:], "big")
    with pytest.raises(PacketChecksumError, match=f"crc32 is {stored:08x}, but the bytes give") as caught:
        decode_packet(bytes(data))
    assert caught.value.field == "crc32"


def test_codebook_mismatch():
    other = make_hash(seed=1)
    data = fixed_packet_bytes([1, 2])
    message = f"codebook_hash is {HASH.hex()}, but this decoder has {other.hex()}"
    with pytest.raises(CodebookMismatchError, match=message):
        decode_packet(data, expected_hash=other)


def test_index_out_of_range():
    # K = 3 takes 2 bits, so the bit pattern 11 is index 3, outside the codebook.
    data = fixed_packet_bytes([0, 1, 2], codebook_size=3)
    data = rewrite_payload(data, bytes([0b00011100]))
    with pytest.raises(PacketPayloadError, match=r"indices\[2\] is 3, but codebook_size is 3") as caught:
        decode_packet(data)
    assert caught.value.field == "indices"


def test_nonzero_padding():
    data = fixed_packet_bytes([0, 1, 2], codebook_size=3)
    data = rewrite_payload(data, bytes([0b00011001]))
    with pytest.raises(PacketPayloadError, match="padding bits after the 6 index bits are not zero"):
        decode_packet(data)


def test_entropy_without_model():
    model = uniform_model(512)
    data = encode_packet(make_packet([1, 2], kind="entropy"), model=model)
    message = f"model_hash is {model.hash.hex()} .* this decoder has no model"
    with pytest.raises(EntropyModelMismatchError, match=message):
        decode_packet(data)


def test_entropy_other_model():
    model = uniform_model(512)
    other = IndexModel.fit([np.zeros(5, dtype=np.int64)], 512)
    data = encode_packet(make_packet([1, 2], kind="entropy"), model=model)
    with pytest.raises(EntropyModelMismatchError, match=f"{model.hash.hex()} .* has model {other.hash.hex()}"):
        decode_packet(data, model=other)


def test_entropy_corrupt_payload():
    model = uniform_model(512)
    data = encode_packet(make_packet(np.arange(50), kind="entropy"), model=model)
    payload = data[HEADER_SIZE:-CRC_SIZE]
    data = rewrite_payload(data, payload + b"\x01")
    with pytest.raises(PacketPayloadError, match="range-coded payload is invalid"):
        decode_packet(data, model=model)


# ---------------------------------------------------------------- untrusted bytes

MODELS = {k: uniform_model(k) for k in CODEBOOK_SIZES}
FAST = settings(
    max_examples=300,
    deadline=timedelta(milliseconds=1000),
    suppress_health_check=[HealthCheck.too_slow],
)


def decode_or_reject(data: bytes, model: IndexModel | None = None) -> None:
    """Decode untrusted bytes: either a PacketError or a packet whose fields hold their invariants."""
    try:
        packet = decode_packet(data, model=model)
    except PacketError:
        return
    assert packet.indices.shape == (packet.index_count,)
    assert packet.indices.min(initial=0) >= 0
    assert packet.indices.max(initial=0) < packet.codebook_size


@FAST
@given(data=st.binary(max_size=300))
def test_random_bytes(data):
    decode_or_reject(data)


@FAST
@given(body=st.binary(max_size=300), fix_crc=st.booleans())
def test_random_after_magic(body, fix_crc):
    data = b"TOAU\x01" + body
    if fix_crc and len(data) >= 4:
        data = with_crc(data[:-4])
    decode_or_reject(data, MODELS[512])


@st.composite
def valid_packets(draw):
    codebook_size = draw(st.sampled_from(CODEBOOK_SIZES))
    kind = draw(st.sampled_from(list(PayloadKind)))
    count = draw(st.integers(0, 60))
    values = draw(st.lists(st.integers(0, codebook_size - 1), min_size=count, max_size=count))
    indices = np.asarray(values, dtype=np.int64)
    packet = MotionPacket(indices, 20, 4 * count, codebook_size, HASH, payload_kind=kind)
    return encode_packet(packet, model=MODELS[codebook_size]), MODELS[codebook_size]


@st.composite
def mutations(draw):
    data, model = draw(valid_packets())
    data = bytearray(data)
    mutation = draw(st.sampled_from(["flip", "truncate", "extend", "count", "field"]))
    if mutation == "flip":
        for _ in range(draw(st.integers(1, 4))):
            bit = draw(st.integers(0, 8 * len(data) - 1))
            data[bit // 8] ^= 1 << (bit % 8)
    elif mutation == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif mutation == "extend":
        data += draw(st.binary(min_size=1, max_size=40))
    elif mutation == "count":
        data[11:15] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    else:
        offset = draw(st.integers(4, HEADER_SIZE - 1))
        data[offset] = draw(st.integers(0, 255))
    if draw(st.booleans()) and len(data) >= CRC_SIZE:
        data = bytearray(with_crc(bytes(data[:-CRC_SIZE])))
    return bytes(data), model


@FAST
@given(case=mutations())
def test_mutated_packets(case):
    data, model = case
    decode_or_reject(data, model)
