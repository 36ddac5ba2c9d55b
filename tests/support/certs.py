"""A throwaway CA made with ``openssl``, and certificates it signs (tests only)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str = "ca") -> Pair:
    """A self-signed CA of its own, valid a day."""
    directory.mkdir(parents=True, exist_ok=True)
    pair = Pair(directory / f"{name}.pem", directory / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", f"/CN=pubtasks test {name}", "-keyout", str(pair.key), "-out", str(pair.cert),
        cwd=directory,
    )  # fmt: skip
    return pair


def issue(ca: Pair, directory: Path, name: str, hosts: tuple[str, ...] = ()) -> Pair:
    """A certificate signed by ``ca`` for ``name`` (its CN), valid for ``hosts`` (DNS
    names or IP addresses), for a server or a client."""
    pair = Pair(directory / f"{name}.pem", directory / f"{name}.key")
    request = directory / f"{name}.csr"
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", str(pair.key), "-out", str(request), cwd=directory,
    )  # fmt: skip
    names = ",".join(
        f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts
    )
    extensions = directory / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE", "extendedKeyUsage=serverAuth,clientAuth"]
    if names:
        lines.append(f"subjectAltName={names}")
    extensions.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-days", "1", "-extfile", str(extensions), "-out", str(pair.cert),
        cwd=directory,
    )  # fmt: skip
    for path in (pair.key, ca.key):
        path.chmod(0o600)
    return pair
