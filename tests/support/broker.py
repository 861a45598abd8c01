"""A mosquitto of our own on a free loopback port (plain or TLS: gateway.devkit's, the one the
demo, the benchmarks and the soak use too), and test certificates made with the openssl CLI.
tests/conftest.py builds its `broker`, `tls_broker` and `certs` fixtures on these."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gateway.devkit.broker import Mosquitto as Broker

__all__ = ["Broker", "make_certs"]


def make_certs(directory: Path) -> dict[str, str]:
    """A CA, a server cert for 127.0.0.1 and a client cert, made with the openssl CLI."""
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=fc-edge test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.pem",
            "-extfile",
            "san.ext",
        )
    return {
        k: str(directory / v)
        for k, v in {
            "ca": "ca.pem",
            "cert": "server.pem",
            "key": "server.key",
            "client_cert": "client.pem",
            "client_key": "client.key",
        }.items()
    }
