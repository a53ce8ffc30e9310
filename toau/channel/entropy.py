"""Lossless entropy coding of VQ-VAE index streams with an adaptive range coder.

The symbol model starts from a prior learned on training index streams
(`IndexModel.fit`, add-one smoothed counts) and adapts while it codes: each coded
symbol gains `ADAPTIVE_INCREMENT` in a second, adaptive count table, which is halved
whenever its sum exceeds `ADAPTIVE_LIMIT`. Encoder and decoder run the same updates,
so they stay in step without side information. Everything is integer arithmetic,
so the coded bytes do not depend on the platform.

Coded stream: the bytes of a range coder with a 32-bit `low` register, one byte
shifted out whenever the range falls below 2**24, and one flush byte at the end.
The stream has no header. The caller stores the index count and the model hash,
and the packet header (`toau.channel.packet`) stores both.

Frequency totals stay at or below 2**16, so the range split per symbol is at least
2**8 wide and costs under 0.006 bits over the model's information content.
"""

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

# Coder parameters. They enter the model hash, so changing one makes old packets fail
# the model check instead of decoding to wrong indices.
CODER_VERSION = 1
PRIOR_TOTAL = 1 << 15  # sum of the scaled prior frequencies, before each is raised to at least 1
ADAPTIVE_INCREMENT = 32  # added to a symbol's adaptive count each time it is coded
ADAPTIVE_LIMIT = 1 << 14  # adaptive counts are halved when their sum exceeds this
MAX_CODEBOOK_SIZE = 1 << 14  # keeps prior + adaptive totals <= 2**16
MODEL_HASH_SIZE = 8  # bytes
MAX_FIT_COUNT = 1 << 47  # max training count sum, so that count * PRIOR_TOTAL stays below 2**62

_MASK32 = (1 << 32) - 1
_TOP = 1 << 24  # shift a byte out when the range falls below this
_FLUSH_PADDING = 3  # zero bytes the decoder appends after the flush byte
_MODEL_FILE_KIND = "toau.index_model"


class EntropyDecodeError(ValueError):
    """Coded bytes that no encoder run with this model and count can produce."""


# ---------------------------------------------------------------- frequency tables


class _FrequencyTable:
    """Positive symbol frequencies with O(log K) prefix sums, updates and lookups (a Fenwick tree)."""

    def __init__(self, frequencies: list[int]):
        self.size = len(frequencies)
        self.frequencies = list(frequencies)
        self.total = sum(frequencies)
        self.tree = [0] + self.frequencies
        for i in range(1, self.size + 1):
            parent = i + (i & -i)
            if parent <= self.size:
                self.tree[parent] += self.tree[i]
        self.top_step = 1 << (self.size.bit_length() - 1)

    def cumulative(self, symbol: int) -> int:
        """Return the sum of the frequencies of symbols 0 .. symbol-1."""
        total = 0
        i = symbol
        while i > 0:
            total += self.tree[i]
            i &= i - 1
        return total

    def add(self, symbol: int, delta: int) -> None:
        self.frequencies[symbol] += delta
        self.total += delta
        i = symbol + 1
        while i <= self.size:
            self.tree[i] += delta
            i += i & -i

    def find(self, target: int) -> tuple[int, int]:
        """Return (symbol, cumulative(symbol)) for the symbol whose interval contains 0 <= target < total."""
        position = 0
        remaining = target
        step = self.top_step
        while step:
            candidate = position + step
            if candidate <= self.size and self.tree[candidate] <= remaining:
                position = candidate
                remaining -= self.tree[candidate]
            step >>= 1
        return position, target - remaining


class _AdaptiveFrequencies:
    """Prior frequencies plus adaptive counts of the symbols coded so far."""

    def __init__(self, prior: list[int]):
        self.prior = prior
        self.adaptive = [0] * len(prior)
        self.adaptive_total = 0
        self.table = _FrequencyTable(prior)

    def update(self, symbol: int) -> None:
        self.table.add(symbol, ADAPTIVE_INCREMENT)
        self.adaptive[symbol] += ADAPTIVE_INCREMENT
        self.adaptive_total += ADAPTIVE_INCREMENT
        if self.adaptive_total > ADAPTIVE_LIMIT:
            # Halving decays the weight of old symbols, so the model follows the recent statistics of the stream.
            self.adaptive = [count >> 1 for count in self.adaptive]
            self.adaptive_total = sum(self.adaptive)
            self.table = _FrequencyTable([p + a for p, a in zip(self.prior, self.adaptive)])


# ---------------------------------------------------------------- model


def check_indices(indices, codebook_size: int, name: str = "indices") -> np.ndarray:
    """Return indices (N,) as int64 after checking that they are integers in [0, codebook_size).

    Raises ValueError naming `name` otherwise.
    """
    array = np.asarray(indices)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype, got {array.dtype}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= codebook_size:
        raise ValueError(f"{name} must lie in [0, {codebook_size}), got values in [{low}, {high}]")
    return array.astype(np.int64)


@dataclass(frozen=True, eq=False)
class IndexModel:
    """Prior symbol counts for the range coder: training counts plus one, counts (K,) int64, each >= 1."""

    counts: np.ndarray

    def __post_init__(self):
        counts = np.asarray(self.counts)
        if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer):
            raise ValueError(f"counts must be a 1-D integer array (K,), got shape {counts.shape} dtype {counts.dtype}")
        if not 2 <= counts.size <= MAX_CODEBOOK_SIZE:
            raise ValueError(
                f"codebook size {counts.size} is outside the 2..{MAX_CODEBOOK_SIZE} that the range coder "
                "supports. Send larger codebooks with fixed-width packing."
            )
        if int(counts.min()) < 1:
            raise ValueError(f"counts must all be >= 1 (add-one smoothing), got minimum {int(counts.min())}")
        if int(counts.sum()) > MAX_FIT_COUNT:
            raise ValueError(
                f"counts sum to {int(counts.sum())}, above the limit {MAX_FIT_COUNT}. Fit on fewer indices."
            )
        counts = counts.astype(np.int64)
        counts.setflags(write=False)
        object.__setattr__(self, "counts", counts)

    @classmethod
    def fit(cls, index_arrays: Iterable[np.ndarray], codebook_size: int) -> "IndexModel":
        """Count the indices of training streams (each (N_i,) int) with add-one smoothing."""
        counts = np.ones(codebook_size, dtype=np.int64)
        for i, indices in enumerate(index_arrays):
            indices = check_indices(indices, codebook_size, f"index array {i}")
            counts += np.bincount(indices, minlength=codebook_size)
        return cls(counts)

    @property
    def codebook_size(self) -> int:
        return int(self.counts.size)

    @cached_property
    def hash(self) -> bytes:
        """8-byte identifier of the counts and the coder parameters."""
        digest = hashlib.sha256()
        digest.update(_MODEL_FILE_KIND.encode())
        parameters = (CODER_VERSION, PRIOR_TOTAL, ADAPTIVE_INCREMENT, ADAPTIVE_LIMIT, self.codebook_size)
        digest.update(struct.pack("<5I", *parameters))
        digest.update(self.counts.astype("<i8").tobytes())
        return digest.digest()[:MODEL_HASH_SIZE]

    @cached_property
    def prior_frequencies(self) -> list[int]:
        """Counts scaled to sum to about PRIOR_TOTAL, each at least 1."""
        count_sum = int(self.counts.sum())
        return [max(1, count * PRIOR_TOTAL // count_sum) for count in self.counts.tolist()]

    def to_dict(self) -> dict:
        return {
            "kind": _MODEL_FILE_KIND,
            "coder_version": CODER_VERSION,
            "codebook_size": self.codebook_size,
            "hash": self.hash.hex(),
            "counts": self.counts.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "IndexModel":
        """Rebuild a model from `to_dict` output and check that its stored hash matches."""
        if data.get("kind") != _MODEL_FILE_KIND:
            raise ValueError(
                f"kind is {data.get('kind')!r}, expected {_MODEL_FILE_KIND!r}. The data is not an index model."
            )
        model = cls(np.asarray(data["counts"], dtype=np.int64))
        if model.codebook_size != data["codebook_size"]:
            raise ValueError(f"codebook_size is {data['codebook_size']}, but counts has {model.codebook_size} entries")
        if model.hash.hex() != data["hash"]:
            raise ValueError(
                f"stored model hash {data['hash']} differs from the recomputed {model.hash.hex()}. The counts were "
                f"edited or the model was saved by coder version {data.get('coder_version')} "
                f"(this is version {CODER_VERSION}). Refit the model."
            )
        return model

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "IndexModel":
        return cls.from_dict(json.loads(Path(path).read_text()))


# ---------------------------------------------------------------- encode


def max_coded_size(count: int) -> int:
    """Return an upper bound on the coded bytes for `count` indices under any model and sequence.

    A symbol costs at most log2(2**16) bits plus under 0.006 bits of range rounding, so
    16.006 bits. The +4 covers the flush byte and the range the coder starts with.
    """
    return 2 * count + count // 256 + 4


def _propagate_carry(out: bytearray) -> None:
    i = len(out) - 1
    while out[i] == 0xFF:
        out[i] = 0
        i -= 1
    # The coded value stays below 1.0, so some earlier byte is below 0xFF and i never goes negative.
    assert i >= 0, "internal error: range-coder carry ran past the first byte"
    out[i] += 1


def encode(indices, model: IndexModel) -> bytes:
    """Range-code indices (N,) int in [0, K) with the adaptive model. `decode` with the same model and N inverts it."""
    symbols = check_indices(indices, model.codebook_size, "indices").tolist()
    frequencies = _AdaptiveFrequencies(model.prior_frequencies)
    out = bytearray()
    low = 0
    width = _MASK32

    for symbol in symbols:
        table = frequencies.table
        step = width // table.total
        low += step * table.cumulative(symbol)
        width = step * table.frequencies[symbol]
        if low > _MASK32:
            low &= _MASK32
            _propagate_carry(out)
        while width < _TOP:
            out.append(low >> 24)
            low = (low << 8) & _MASK32
            width <<= 8
        frequencies.update(symbol)

    # Flush: the multiple of 2**24 in [low, low + width) needs one byte, and the decoder
    # pads the 3 zero bytes that follow it.
    value = (low + _TOP - 1) & ~(_TOP - 1)
    if value > _MASK32:
        _propagate_carry(out)
    out.append((value >> 24) & 0xFF)

    assert len(out) <= max_coded_size(len(symbols)), "internal error: coded size above max_coded_size"
    return bytes(out)


# ---------------------------------------------------------------- decode


def decode(data: bytes, count: int, model: IndexModel) -> np.ndarray:
    """Decode indices (count,) int64 in [0, K) from `encode` output.

    Safe on untrusted bytes: the work is O(count log K) and memory O(count), so the
    caller bounds `count`. Invalid bytes either raise EntropyDecodeError or decode to
    some in-range indices. Catching corruption that decodes cleanly is left to a checksum
    such as the packet CRC.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    size = len(data)
    if not 1 <= size <= max_coded_size(count):
        raise EntropyDecodeError(
            f"coded stream has {size} bytes, but {count} indices take 1 to {max_coded_size(count)} bytes. "
            "The count or the stream is wrong."
        )

    frequencies = _AdaptiveFrequencies(model.prior_frequencies)
    out = np.empty(count, dtype=np.int64)
    padded_end = size + _FLUSH_PADDING
    data = bytes(data) + bytes(_FLUSH_PADDING)
    code = int.from_bytes(data[:4], "big")  # offset of the coded value from `low`
    position = 4
    width = _MASK32

    for i in range(count):
        table = frequencies.table
        step = width // table.total
        target = code // step
        if target >= table.total:
            raise EntropyDecodeError(
                f"coded stream is invalid at index {i} of {count}. The bytes are corrupt or were coded with "
                f"another model than {model.hash.hex()}."
            )
        symbol, cumulative = table.find(target)
        code -= step * cumulative
        width = step * table.frequencies[symbol]
        while width < _TOP:
            if position >= padded_end:
                raise EntropyDecodeError(
                    f"coded stream of {size} bytes ends early, at index {i} of {count}. It was truncated or "
                    "the count is too large."
                )
            code = (code << 8) | data[position]
            position += 1
            width <<= 8
        frequencies.update(symbol)
        out[i] = symbol

    if position != padded_end:
        raise EntropyDecodeError(
            f"coded stream has {padded_end - position} bytes after the last of {count} indices. "
            "It was extended or the count is too small."
        )
    return out
