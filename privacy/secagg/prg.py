"""Mask expansion: a 256-bit seed -> a vector of uniform words, with AES-256 in counter mode.

The seed is the AES-256 key and the counter starts at 0. Every seed in this protocol is used for exactly one
stream (self-mask seeds are fresh random values used once; pairwise seeds are derived per (instance, pair)),
so (key, counter) pairs never repeat. Under the PRP assumption for AES-256 the keystream is indistinguishable
from uniform bytes with 256-bit keys; viewed as little-endian uint32/uint64 words, and reduced mod 2^bits when
the modulus is smaller than the word, it is uniform mod 2^bits. (Flower 1.41 folds the seed to 32 bits and uses
numpy's Mersenne Twister; this module keeps the full 256 bits and a cryptographic cipher.)

OpenSSL's AES-NI path writes the keystream straight into a reused numpy buffer (`update_into`), so expanding a
mask costs about as much as a memory copy; see bench/secagg_mask.py.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
_ZERO_IV = bytes(16)
_BLOCK = 16


class MaskExpander:
    """Expands seeds into masks of one length and word type, reusing its buffers between calls."""

    def __init__(self, length: int, dtype: np.dtype | type):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            raise ValueError(f"masks are uint32 or uint64 words, not {self.dtype}")
        self.length = int(length)
        nbytes = self.length * self.dtype.itemsize
        self._zeros = np.zeros(nbytes, dtype=np.uint8)
        # cryptography requires room for one extra block minus one byte in update_into.
        self._out = np.empty(nbytes + _BLOCK, dtype=np.uint8)
        self._words = self._out[:nbytes].view(self.dtype)

    def expand(self, seed: bytes) -> np.ndarray:
        """The mask of `seed`, as a view into an internal buffer (valid until the next call)."""
        if len(seed) != SEED_BYTES:
            raise ValueError(f"mask seeds are {SEED_BYTES} bytes, got {len(seed)}")
        encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_IV)).encryptor()
        # the stubs name bytes/bytearray/memoryview; any contiguous buffer works (numpy's stubs declare no __buffer__)
        encryptor.update_into(self._zeros, self._out)  # type: ignore[arg-type]
        return self._words

    def add(self, acc: np.ndarray, seed: bytes, sign: int = 1) -> None:
        """acc += sign * mask(seed), in place, wrapping mod 2^(word bits)."""
        mask = self.expand(seed)
        if sign > 0:
            np.add(acc, mask, out=acc)
        else:
            np.subtract(acc, mask, out=acc)


def expand_mask(seed: bytes, length: int, dtype: np.dtype | type = np.uint32) -> np.ndarray:
    """A fresh array holding the mask of `seed` (convenience; MaskExpander avoids the allocation)."""
    return MaskExpander(length, dtype).expand(seed).copy()
