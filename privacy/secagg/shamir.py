"""Shamir secret sharing over the prime field GF(p), p = 2^31 - 1, vectorised with numpy.

A 32-byte secret is cut into 16 little-endian 16-bit words; each word is one field element (< 2^16 < p) and
is shared with its own random polynomial f(x) = s + a_1 x + ... + a_{t-1} x^{t-1} over GF(p), coefficients
uniform in [0, p). Party j holds f(x_j) for a public, distinct, non-zero x_j. Any t shares give s by
Lagrange interpolation at 0; any t-1 shares are uniformly distributed whatever s is (for every candidate
secret there is exactly one polynomial through the t-1 points and (0, s)), so they say nothing about s.

Arithmetic: operands < p < 2^31, so a product is < 2^62 and fits int64 exactly; every product is reduced
mod p before the next addition.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

PRIME = 2**31 - 1
SECRET_BYTES = 32
WORDS_PER_SECRET = SECRET_BYTES // 2  # 16-bit words


def secret_to_elements(secret: bytes) -> np.ndarray:
    """32 bytes -> 16 field elements (int64), each the value of one 16-bit little-endian word."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a shared secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    return np.frombuffer(secret, dtype="<u2").astype(np.int64)


def elements_to_secret(elements: np.ndarray) -> bytes:
    """Inverse of `secret_to_elements`; raises if an element is not a 16-bit word (wrong shares)."""
    elements = np.asarray(elements, dtype=np.int64)
    if elements.shape != (WORDS_PER_SECRET,) or elements.min() < 0 or elements.max() >= 2**16:
        raise ValueError("reconstructed elements are not 16-bit words: the shares are inconsistent")
    return elements.astype("<u2").tobytes()


def uniform_field_elements(shape: tuple[int, ...], prime: int = PRIME) -> np.ndarray:
    """Exactly uniform elements of [0, prime) from os.urandom, by rejection sampling (prime < 2^31)."""
    if not 2 <= prime < 2**31:
        raise ValueError(f"prime must be in [2, 2^31), got {prime}")
    bits = prime.bit_length()
    count = int(np.prod(shape, dtype=np.int64))
    out = np.empty(count, dtype=np.int64)
    filled = 0
    while filled < count:
        need = count - filled
        draw = np.frombuffer(os.urandom(4 * (need + need // 2 + 8)), dtype="<u4").astype(np.int64)
        draw &= (1 << bits) - 1
        draw = draw[draw < prime]
        take = min(need, draw.size)
        out[filled : filled + take] = draw[:take]
        filled += take
    return out.reshape(shape)


def evaluate_polynomials(coefficients: np.ndarray, xs: Sequence[int], prime: int = PRIME) -> np.ndarray:
    """f(x) for every polynomial and every x, by Horner's rule mod prime.

    coefficients: (..., t) int64 in [0, prime), constant term first. Returns (len(xs), ...) int64.
    """
    coefficients = np.asarray(coefficients, dtype=np.int64)
    xs_arr = np.asarray(xs, dtype=np.int64).reshape((-1,) + (1,) * (coefficients.ndim - 1))
    acc = np.zeros((xs_arr.shape[0],) + coefficients.shape[:-1], dtype=np.int64)
    for j in range(coefficients.shape[-1] - 1, -1, -1):
        acc = (acc * xs_arr + coefficients[..., j]) % prime
    return acc


def split(secrets: np.ndarray, xs: Sequence[int], threshold: int, prime: int = PRIME) -> np.ndarray:
    """Share field elements `secrets` (any shape, values in [0, prime)) among parties at points `xs`.

    Returns shares of shape (len(xs),) + secrets.shape: shares[j] is what party x_j receives.
    """
    _check_points(xs, prime)
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be in [1, {len(xs)}] for {len(xs)} parties, got {threshold}")
    secrets = np.asarray(secrets, dtype=np.int64)
    if secrets.size and (secrets.min() < 0 or secrets.max() >= prime):
        raise ValueError("secrets must be field elements in [0, prime)")
    coefficients = uniform_field_elements(secrets.shape + (threshold,), prime)
    coefficients[..., 0] = secrets
    return evaluate_polynomials(coefficients, xs, prime)


def lagrange_weights_at_zero(xs: Sequence[int], prime: int = PRIME) -> np.ndarray:
    """w_i = prod_{j != i} x_j / (x_j - x_i) mod prime, so f(0) = sum_i w_i f(x_i) for deg f < len(xs)."""
    _check_points(xs, prime)
    weights = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % prime
                den = den * (xj - xi) % prime
        weights.append(num * pow(den, prime - 2, prime) % prime)
    return np.asarray(weights, dtype=np.int64)


def reconstruct(xs: Sequence[int], shares: np.ndarray, prime: int = PRIME) -> np.ndarray:
    """Interpolate at 0 from exactly the given shares: shares[j] belongs to x_j, shape (len(xs), ...).

    Pass exactly `threshold` shares: more is allowed (the result is the same if they are consistent), fewer
    gives a wrong value without any error, which is why callers check the result against a commitment.
    """
    shares = np.asarray(shares, dtype=np.int64)
    if shares.shape[0] != len(xs):
        raise ValueError(f"{shares.shape[0]} shares for {len(xs)} points")
    weights = lagrange_weights_at_zero(xs, prime)
    acc = np.zeros(shares.shape[1:], dtype=np.int64)
    for w, share in zip(weights, shares):
        acc = (acc + w * share % prime) % prime
    return acc


def _check_points(xs: Sequence[int], prime: int) -> None:
    if len(set(xs)) != len(xs):
        raise ValueError(f"share points must be distinct, got {list(xs)}")
    if any(not 0 < int(x) < prime for x in xs):
        raise ValueError("share points must be non-zero field elements")
