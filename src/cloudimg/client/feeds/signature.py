"""OpenPGP signatures checked with Debian's ``gpg`` against the operator's keys only.

Each check imports the given key files into a fresh ``GNUPGHOME`` (a temporary
directory, gone afterwards): a signature counts only when it is valid and made by one
of those keys; the user's own keyring is never read. A clear-signed file's text is taken
from what ``gpg`` says was signed, never from the file around it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cloudimg.client.errors import UsageError, VerificationError

__all__ = ["Signed", "is_clear_signed", "verify_clear_signed", "verify_detached"]

_CLEAR_HEADER = b"-----BEGIN PGP SIGNED MESSAGE-----"
_BAD = ("BADSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG")
_TIMEOUT = 120


@dataclass(frozen=True, slots=True)
class Signed:
    """What a good signature covers and the fingerprint of the key that made it."""

    data: bytes
    fingerprint: str


def is_clear_signed(data: bytes) -> bool:
    return data.lstrip().startswith(_CLEAR_HEADER)


def verify_detached(data: bytes, signature: bytes, keys: list[Path], where: str) -> Signed:
    """Check the detached ``signature`` of ``data`` (``SHA256SUMS.gpg``).

    Raises:
        VerificationError: no valid signature by one of ``keys``.
    """
    with _keyring(keys) as home:
        (home / "data").write_bytes(data)
        (home / "data.sig").write_bytes(signature)
        fingerprint = _run(home, ["--verify", str(home / "data.sig"), str(home / "data")], where)
    return Signed(data, fingerprint)


def verify_clear_signed(data: bytes, keys: list[Path], where: str) -> Signed:
    """Check a clear-signed file (Fedora's ``CHECKSUM``); the text is what was signed.

    Raises:
        VerificationError: no valid signature by one of ``keys``.
    """
    with _keyring(keys) as home:
        (home / "data.asc").write_bytes(data)
        out = home / "signed"
        fingerprint = _run(home, ["--output", str(out), "--decrypt", str(home / "data.asc")], where)
        return Signed(out.read_bytes(), fingerprint)


@contextmanager
def _keyring(keys: list[Path]) -> Iterator[Path]:
    """A temporary ``GNUPGHOME`` holding exactly ``keys``."""
    if not keys:
        raise UsageError("a signature can only be checked against keys: give --key")
    if shutil.which("gpg") is None:
        raise UsageError("checking a signature needs gpg (Debian: gnupg) on PATH")
    home = Path(tempfile.mkdtemp(prefix="cloudimg-gpg-"))
    try:
        home.chmod(0o700)
        for key in keys:
            try:
                material = key.read_bytes()
            except OSError as exc:
                raise UsageError(f"cannot read the key {key}: {exc.strerror}") from None
            done = _gpg(home, ["--import"], material)
            if done.returncode != 0 or b"IMPORT_OK" not in done.stdout:
                raise UsageError(f"{key} holds no OpenPGP public key gpg can import")
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _gpg(home: Path, args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    command = [
        "gpg", "--homedir", str(home), "--batch", "--no-tty", "--no-auto-key-retrieve",
        "--trust-model", "always", "--status-fd", "1", *args,
    ]  # fmt: skip
    # --trust-model always: the keyring holds only the operator's keys, which is the trust.
    return subprocess.run(command, input=stdin, capture_output=True, timeout=_TIMEOUT, check=False)


def _run(home: Path, args: list[str], where: str) -> str:
    """Run a verification; the fingerprint of the good signature, else why not."""
    done = _gpg(home, args)
    status = [line.split() for line in done.stdout.decode("utf-8", "replace").splitlines()]
    words = [line[1:] for line in status if len(line) > 1 and line[0] == "[GNUPG:]"]
    bad = [word for word in words if word[0] in _BAD]
    # VALIDSIG <signing key's fingerprint> ... [<primary key's fingerprint>]: the primary
    # key is the one an operator knows (a subkey may have made the signature).
    valid = [
        word[10] if len(word) > 10 else word[1]
        for word in words
        if word[0] == "VALIDSIG" and len(word) > 1
    ]
    if bad:
        raise VerificationError(f"{where}: bad signature ({bad[0][0]} from key {bad[0][1]})")
    if not valid:
        missing = [word[1] for word in words if word[0] == "NO_PUBKEY" and len(word) > 1]
        if missing:
            raise VerificationError(
                f"{where} is signed by key {missing[0]}, which is not one of the keys given"
            )
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise VerificationError(
            f"{where}: no valid signature ({reason[-1] if reason else 'gpg found none'})"
        )
    return valid[0]
