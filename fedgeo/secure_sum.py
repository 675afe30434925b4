"""Secure summation: the server learns the sum of the clients' vectors, never one vector.

A pairwise-masking protocol in the manner of SecAgg+ (Bonawitz et al., CCS 2017; Bell et
al., CCS 2020), written against plain bytes and numpy arrays so that any transport can
carry it (the federation carries it in Flower messages: ``client/secure_sum_handler.py``,
``server/secure_sum_round.py``). Every client ``u`` of a cohort has ``k`` neighbours on a
seeded ring; each pair of neighbours agrees on a mask by X25519, and ``u`` sends

    y_u = x_u + PRG(b_u) + sum_{v in N(u)} sign(u, v) * PRG(s_uv)      (mod 2^64)

where ``b_u`` is a fresh self-mask seed and ``s_uv = s_vu`` the pairwise key, so the pair
masks cancel in the sum. ``b_u`` and ``u``'s mask private key are Shamir-shared among its
neighbours (threshold ``t``), encrypted pairwise (AES-GCM under an X25519 key), so that

* for a client that sent ``y_u`` the server recovers ``b_u`` and removes its self mask;
* for a client that dropped after sharing, the server recovers its mask key and removes
  the pair masks its neighbours added for it;

and never both for one client: a neighbour refuses to reveal both kinds of share for the
same client. Values travel in fixed point (``round(x * scale)`` as 64-bit integers), so a
sum of integers is exact. The PRG is AES-256 in counter mode (``cryptography``), Shamir's
scheme is pycryptodome's over GF(2^128), as in Flower's SecAgg+.

Stages (each a round trip between the server and the surviving clients)::

    setup   -> public keys (c: share encryption, s: masks)
    share   <- neighbours' public keys;   -> encrypted shares for each neighbour
    mask    <- shares addressed to u;     -> the masked vector y_u
    unmask  <- who sent y, who dropped;   -> shares of b (senders) and s_sk (dropped)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECRET_BYTES = 32
DEFAULT_NEIGHBOURS = 10
DEFAULT_SCALE = 2**16
"""Fixed-point scale: values are sent as ``round(x * scale)``."""


class SecureSumError(ValueError):
    """A protocol step cannot go on (too few clients left, a bad message)."""


@dataclass(frozen=True)
class SecureSumConfig:
    """The public settings of one protocol instance (one cohort)."""

    clients: tuple[int, ...]
    """Ids of the cohort's clients (any distinct integers)."""
    length: int
    """Length of every client's vector."""
    neighbours: int = DEFAULT_NEIGHBOURS
    """Each client masks with (and shares its secrets among) this many others; capped at
    the cohort size minus one."""
    threshold: int = 0
    """Shares needed to rebuild a secret; 0 = a majority of a client's neighbours."""
    scale: int = DEFAULT_SCALE
    seed: int = 0
    """Seeds the ring order of the neighbour graph (public)."""

    def __post_init__(self) -> None:
        if len(set(self.clients)) != len(self.clients):
            raise SecureSumError("secure sum: client ids must be distinct")
        if len(self.clients) < 2:
            raise SecureSumError("secure sum needs at least 2 clients in a cohort")
        if self.length < 1:
            raise SecureSumError(f"secure sum: vector length must be >= 1, got {self.length}")
        if not 1 <= self.threshold <= self.degree and self.threshold != 0:
            raise SecureSumError(
                f"secure sum: threshold must be in 1..{self.degree}, got {self.threshold}"
            )
        if self.scale < 1:
            raise SecureSumError(f"secure sum: scale must be >= 1, got {self.scale}")

    @property
    def degree(self) -> int:
        """Neighbours per client (the ring's degree)."""
        return max(1, min(self.neighbours, len(self.clients) - 1))

    @property
    def shares_needed(self) -> int:
        return self.threshold or self.degree // 2 + 1

    def neighbour_map(self) -> dict[int, tuple[int, ...]]:
        """Each client's neighbours: a ring over a seeded permutation, ``degree`` each."""
        order = np.random.default_rng(self.seed).permutation(len(self.clients))
        ring = [self.clients[i] for i in order]
        n, k = len(ring), self.degree
        out: dict[int, set[int]] = {c: set() for c in ring}
        for pos, client in enumerate(ring):
            for step in range(1, k // 2 + 1):
                for other in (ring[(pos + step) % n], ring[(pos - step) % n]):
                    if other != client:
                        out[client].add(other)
            if k % 2:  # odd degree: also the client across the ring
                other = ring[(pos + n // 2) % n]
                if other != client:
                    out[client].add(other)
                    out[other].add(client)
        return {c: tuple(sorted(v)) for c, v in out.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SecureSumConfig:
        values = json.loads(text)
        values["clients"] = tuple(int(c) for c in values["clients"])
        return cls(**values)

    def to_dict(self) -> dict[str, int | list[int]]:
        return {
            "clients": list(self.clients),
            "length": self.length,
            "neighbours": self.neighbours,
            "threshold": self.threshold,
            "scale": self.scale,
            "seed": self.seed,
        }


# --- primitives ------------------------------------------------------------------------


def prg(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudo-random uint64 from a 32-byte seed (AES-256-CTR keystream)."""
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
    stream = encryptor.update(b"\0" * (8 * length)) + encryptor.finalize()
    return np.frombuffer(stream, dtype=np.uint64).copy()


def _kdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def _agree(private: X25519PrivateKey, public: bytes, info: bytes) -> bytes:
    try:
        peer = X25519PublicKey.from_public_bytes(public)
    except ValueError as err:
        raise SecureSumError(f"secure sum: a bad public key ({err})") from err
    return _kdf(private.exchange(peer), info)


def pair_mask(private: X25519PrivateKey, peer_public: bytes, me: int, peer: int, n: int):
    """The mask ``me`` adds for ``peer``: +PRG(s) if me < peer else -PRG(s) (mod 2^64)."""
    mask = prg(_agree(private, peer_public, b"fedgeo secure-sum mask"), n)
    return mask if me < peer else (np.uint64(0) - mask)


def share_secret(secret: bytes, threshold: int, holders: int) -> list[bytes]:
    """Shamir shares of a 32-byte secret: each share is 1 index byte and two 16-byte
    chunk shares (GF(2^128), pycryptodome)."""
    if len(secret) != SECRET_BYTES:
        raise SecureSumError("secure sum: secrets are 32 bytes")
    halves = [Shamir.split(threshold, holders, secret[i : i + 16], ssss=False) for i in (0, 16)]
    return [bytes([a[0]]) + a[1] + b[1] for a, b in zip(*halves, strict=True)]


def combine_secret(shares: Sequence[bytes]) -> bytes:
    """The secret back from at least ``threshold`` shares of :func:`share_secret`."""
    parts = []
    for offset in (1, 17):
        parts.append(Shamir.combine([(s[0], s[offset : offset + 16]) for s in shares], ssss=False))
    return b"".join(parts)


def encode(values: np.ndarray, scale: int) -> np.ndarray:
    """Fixed point: ``round(values * scale)`` as uint64 (two's complement)."""
    values = np.asarray(values, dtype=np.float64)
    scaled = np.rint(values * scale)
    if not np.all(np.isfinite(scaled)) or np.any(np.abs(scaled) >= 2.0**62):
        raise SecureSumError("secure sum: values must be finite and below 2^62 / scale")
    return scaled.astype(np.int64).view(np.uint64)


def decode(total: np.ndarray, scale: int) -> np.ndarray:
    """Floats back from a fixed-point sum."""
    return np.asarray(total, dtype=np.uint64).view(np.int64).astype(np.float64) / scale


def _nonce(sender: int, receiver: int) -> bytes:
    return hashlib.sha256(f"{sender}->{receiver}".encode()).digest()[:12]


# --- client ----------------------------------------------------------------------------


@dataclass(eq=False)
class ClientSession:
    """One client's side of one protocol instance. Holds its secrets between stages."""

    config: SecureSumConfig
    client: int
    _c_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate, repr=False)
    _s_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate, repr=False)
    _self_seed: bytes = field(default_factory=lambda: os.urandom(SECRET_BYTES), repr=False)
    _public: dict[int, tuple[bytes, bytes]] = field(default_factory=dict, repr=False)
    _shares: dict[int, tuple[bytes, bytes]] = field(default_factory=dict, repr=False)
    _masked_with: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.client not in self.config.clients:
            raise SecureSumError(f"secure sum: client {self.client} is not in the cohort")
        self.neighbours = self.config.neighbour_map()[self.client]

    def to_bytes(self) -> bytes:
        """The session's secrets, to keep on the client between stages (never sent)."""
        return json.dumps(
            {
                "c": _private_bytes(self._c_key).hex(),
                "s": _private_bytes(self._s_key).hex(),
                "b": self._self_seed.hex(),
                "public": {str(v): [c.hex(), k.hex()] for v, (c, k) in self._public.items()},
                "shares": {str(v): [a.hex(), b.hex()] for v, (a, b) in self._shares.items()},
            }
        ).encode()

    @classmethod
    def from_bytes(cls, config: SecureSumConfig, client: int, blob: bytes) -> ClientSession:
        """A session saved by :meth:`to_bytes`."""
        data = json.loads(blob)
        session = cls(
            config,
            client,
            _c_key=X25519PrivateKey.from_private_bytes(bytes.fromhex(data["c"])),
            _s_key=X25519PrivateKey.from_private_bytes(bytes.fromhex(data["s"])),
            _self_seed=bytes.fromhex(data["b"]),
        )
        session._public = {
            int(v): (bytes.fromhex(c), bytes.fromhex(k)) for v, (c, k) in data["public"].items()
        }
        session._shares = {
            int(v): (bytes.fromhex(a), bytes.fromhex(b)) for v, (a, b) in data["shares"].items()
        }
        return session

    def setup(self) -> dict[str, bytes]:
        """Stage 1: this client's two public keys."""
        return {"c": _public_bytes(self._c_key), "s": _public_bytes(self._s_key)}

    def share(self, public_keys: Mapping[int, Mapping[str, bytes]]) -> dict[int, bytes]:
        """Stage 2: given the neighbours' public keys (those that answered stage 1),
        Shamir-share the self-mask seed and the mask key; one ciphertext per neighbour."""
        present = [v for v in self.neighbours if v in public_keys]
        need = self.config.shares_needed
        if len(present) < need:
            raise SecureSumError(
                f"secure sum: client {self.client} has {len(present)} neighbours left, "
                f"needs {need}"
            )
        self._public = {v: (public_keys[v]["c"], public_keys[v]["s"]) for v in present}
        holders = len(self.neighbours)
        b_shares = share_secret(self._self_seed, need, holders)
        s_shares = share_secret(_private_bytes(self._s_key), need, holders)
        out = {}
        for i, v in enumerate(self.neighbours):
            if v not in self._public:
                continue
            key = _agree(self._c_key, self._public[v][0], b"fedgeo secure-sum shares")
            out[v] = AESGCM(key).encrypt(_nonce(self.client, v), b_shares[i] + s_shares[i], None)
        return out

    def mask(self, vector: np.ndarray, ciphertexts: Mapping[int, bytes]) -> np.ndarray:
        """Stage 3: keep the shares addressed to this client (from the neighbours that
        answered stage 2) and return the masked fixed-point vector."""
        senders = [v for v in self.neighbours if v in ciphertexts and v in self._public]
        for v in senders:
            key = _agree(self._c_key, self._public[v][0], b"fedgeo secure-sum shares")
            try:
                plain = AESGCM(key).decrypt(_nonce(v, self.client), ciphertexts[v], None)
            except Exception as err:  # cryptography raises InvalidTag
                raise SecureSumError(f"secure sum: shares from {v} do not decrypt") from err
            half = len(plain) // 2
            self._shares[v] = (plain[:half], plain[half:])
        values = encode(vector, self.config.scale)
        if values.shape != (self.config.length,):
            raise SecureSumError(
                f"secure sum: vector of length {values.size}, the cohort sums "
                f"{self.config.length}"
            )
        n = self.config.length
        masked = values + prg(self._self_seed, n)
        for v in senders:
            masked += pair_mask(self._s_key, self._public[v][1], self.client, v, n)
        self._masked_with = tuple(senders)
        return masked

    def unmask(self, survivors: Sequence[int], dropped: Sequence[int]) -> dict[str, dict]:
        """Stage 4: shares of the self-mask seeds of the neighbours that sent a vector
        and of the mask keys of the neighbours that dropped after sharing."""
        survivors, dropped = set(survivors), set(dropped)
        if survivors & dropped:
            raise SecureSumError("secure sum: a client cannot both have sent and dropped")
        if len(survivors) < self.config.shares_needed:
            raise SecureSumError("secure sum: too few survivors to reveal anything")
        return {
            "b": {v: self._shares[v][0] for v in survivors if v in self._shares},
            "s": {v: self._shares[v][1] for v in dropped if v in self._shares},
        }


# --- server ----------------------------------------------------------------------------


@dataclass(eq=False)
class ServerSession:
    """The server's side of one protocol instance: routes messages and unmasks the sum."""

    config: SecureSumConfig
    public_keys: dict[int, dict[str, bytes]] = field(default_factory=dict)
    ciphertexts: dict[int, dict[int, bytes]] = field(default_factory=dict)
    """sender -> receiver -> ciphertext."""
    masked: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.neighbours = self.config.neighbour_map()

    def receive_setup(self, replies: Mapping[int, Mapping[str, bytes]]) -> list[str]:
        """Stage 1 replies. A malformed reply leaves its client out; returns why."""
        rejected = []
        for client, keys in replies.items():
            try:
                self._check_member(client)
                if set(keys) != {"c", "s"} or any(len(bytes(k)) != 32 for k in keys.values()):
                    raise SecureSumError(f"secure sum: client {client} sent malformed keys")
            except SecureSumError as err:
                rejected.append(str(err))
                continue
            self.public_keys[client] = {k: bytes(v) for k, v in keys.items()}
        return rejected

    def keys_for(self, client: int) -> dict[int, dict[str, bytes]]:
        """Stage 2 input of ``client``: its neighbours' public keys."""
        return {v: self.public_keys[v] for v in self.neighbours[client] if v in self.public_keys}

    def receive_shares(self, replies: Mapping[int, Mapping[int, bytes]]) -> list[str]:
        """Stage 2 replies. A client that skipped the setup or addressed shares to
        others than its neighbours is left out; returns why."""
        rejected = []
        for client, shares in replies.items():
            try:
                self._check_member(client)
                if client not in self.public_keys:
                    raise SecureSumError(f"secure sum: client {client} skipped the setup")
                if set(shares) - set(self.neighbours[client]):
                    raise SecureSumError(
                        f"secure sum: client {client} sent shares to non-neighbours"
                    )
            except SecureSumError as err:
                rejected.append(str(err))
                continue
            self.ciphertexts[client] = dict(shares)
        return rejected

    def shares_for(self, client: int) -> dict[int, bytes]:
        """Stage 3 input of ``client``: the ciphertexts its neighbours addressed to it."""
        return {
            sender: boxes[client]
            for sender, boxes in self.ciphertexts.items()
            if client in boxes and sender in self.neighbours[client]
        }

    def receive_masked(self, replies: Mapping[int, np.ndarray]) -> list[str]:
        """Stage 3 replies. A vector of the wrong type or length is left out (its client
        counts as dropped, so its pair masks are removed); returns why."""
        rejected = []
        for client, vector in replies.items():
            vector = np.asarray(vector)
            try:
                self._check_member(client)
                if client not in self.ciphertexts:
                    raise SecureSumError(f"secure sum: client {client} skipped the sharing")
                if vector.dtype != np.uint64 or vector.shape != (self.config.length,):
                    raise SecureSumError(
                        f"secure sum: client {client} sent a vector of {vector.dtype} "
                        f"{vector.shape}, expected uint64 ({self.config.length},)"
                    )
            except SecureSumError as err:
                rejected.append(str(err))
                continue
            self.masked[client] = vector
        return rejected

    def survivors(self) -> tuple[list[int], list[int]]:
        """Clients that sent a masked vector, and those that shared but dropped since."""
        sent = sorted(self.masked)
        dropped = sorted(set(self.ciphertexts) - set(self.masked))
        if len(sent) < 2:
            raise SecureSumError(f"secure sum: {len(sent)} masked vector(s) left, needs 2")
        return sent, dropped

    def unmask(self, replies: Mapping[int, Mapping[str, Mapping[int, bytes]]]) -> np.ndarray:
        """The sum of the survivors' vectors (floats), from the stage-4 shares."""
        sent, dropped = self.survivors()
        need = self.config.shares_needed
        b_shares: dict[int, list[bytes]] = {v: [] for v in sent}
        s_shares: dict[int, list[bytes]] = {v: [] for v in dropped}
        for holder, parts in replies.items():
            self._check_member(holder)
            for v, share in parts.get("b", {}).items():
                if v in b_shares and holder in self.neighbours[v]:
                    b_shares[v].append(share)
            for v, share in parts.get("s", {}).items():
                if v in s_shares and holder in self.neighbours[v]:
                    s_shares[v].append(share)
        n = self.config.length
        total = np.zeros(n, dtype=np.uint64)
        for vector in self.masked.values():
            total += vector
        for v, shares in b_shares.items():
            if len(shares) < need:
                raise SecureSumError(
                    f"secure sum: {len(shares)} shares of client {v}'s self mask, needs {need}"
                )
            total -= prg(combine_secret(shares[:need]), n)
        for v, shares in s_shares.items():
            if len(shares) < need:
                raise SecureSumError(
                    f"secure sum: {len(shares)} shares of dropped client {v}'s key, needs {need}"
                )
            key = X25519PrivateKey.from_private_bytes(combine_secret(shares[:need]))
            for u in self.neighbours[v]:
                if u in self.masked and v in self.ciphertexts:
                    # u added pair_mask(u, v); v's key gives the same mask from v's side.
                    total += pair_mask(key, self.public_keys[u]["s"], v, u, n)
        return decode(total, self.config.scale)

    def _check_member(self, client: int) -> None:
        if client not in self.neighbours:
            raise SecureSumError(f"secure sum: client {client} is not in the cohort")


def cohorts(clients: Sequence[int], size: int) -> list[tuple[int, ...]]:
    """Split clients into cohorts of about ``size`` (none smaller than 2)."""
    clients = list(clients)
    if len(clients) < 2:
        raise SecureSumError("secure sum needs at least 2 clients")
    count = max(1, math.floor(len(clients) / max(size, 2)))
    return [tuple(int(c) for c in part) for part in np.array_split(np.asarray(clients), count)]
