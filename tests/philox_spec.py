"""An independent rendering of docs/noise.md in numpy (uint64 words, float64 math).

Kept apart from langevin_kernels.reference on purpose: the tests check every
backend, the reference included, against this text-level implementation.
"""
import numpy as np

KNOWN_ANSWERS = [  # Random123 known-answer vectors for Philox4x32-10: counter, key, output
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

M32 = np.uint64(0xFFFFFFFF)


def philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint64 arrays holding 32-bit words."""
    c = [np.asarray(v, dtype=np.uint64) for v in (c0, c1, c2, c3)]
    k0, k1 = np.uint64(k0), np.uint64(k1)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]   # < 2^64: exact in uint64
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & M32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & M32]
        k0 = (k0 + np.uint64(0x9E3779B9)) & M32
        k1 = (k1 + np.uint64(0xBB67AE85)) & M32
    return c


def normal_stream(n, seed, offset):
    """The first n normals at (seed, offset), exactly as docs/noise.md words it."""
    groups = (n + 3) // 4
    c = (np.uint64(offset) + np.arange(groups, dtype=np.uint64))  # wraps mod 2^64 like the spec's uint64
    zero = np.zeros(groups, dtype=np.uint64)
    r = philox(c & M32, c >> np.uint64(32), zero, zero, seed & 0xFFFFFFFF, seed >> 32)
    u = [(w.astype(np.float64) + 0.5) * 2.0 ** -32 for w in r]
    n0 = np.sqrt(-2 * np.log(u[0])) * np.cos(2 * np.pi * u[1])
    n1 = np.sqrt(-2 * np.log(u[0])) * np.sin(2 * np.pi * u[1])
    n2 = np.sqrt(-2 * np.log(u[2])) * np.cos(2 * np.pi * u[3])
    n3 = np.sqrt(-2 * np.log(u[2])) * np.sin(2 * np.pi * u[3])
    return np.stack([n0, n1, n2, n3], axis=1).reshape(-1)[:n]
