"""Keys and certificates of one local cluster, made with the `openssl` command.

The `openssl` CLI (Debian package `openssl`) keeps a crypto library out of infleet's
dependencies. Every call is an argv list. What is made:

- ``ca.crt``/``ca.key``: the cluster CA (serving certificate, ``kube-root-ca.crt`` in pods);
- ``apiserver.crt``/``.key``: serving certificate for 127.0.0.1, localhost and the in-cluster
  names of the ``kubernetes`` Service;
- ``sa.key``/``sa.pub``: the service-account token signing key pair.

Clients authenticate with static bearer tokens (``tokens.csv``), one per component.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from infleet.devcluster.errors import ClusterStartError

SERVICE_IP = "10.96.0.1"
SANS = (
    "IP:127.0.0.1", f"IP:{SERVICE_IP}", "DNS:localhost", "DNS:kubernetes",
    "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)
# user -> groups. The component users have bootstrap RBAC bindings of their own.
USERS = {
    "admin": ("system:masters",),
    "system:kube-controller-manager": (),
    "system:kube-scheduler": (),
    "infleet:kwok": ("system:masters",),
    "infleet:executor": ("system:masters",),
    # Traefik: no group; its ClusterRole (infleet.devcluster.gateway.RULES) is all it may do.
    "infleet:gateway": (),
}


@dataclass(frozen=True)
class Pki:
    dir: Path
    tokens: dict[str, str]

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def path(self, name: str) -> Path:
        return self.dir / name


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterStartError(f"openssl {args[0]} failed: {proc.stderr.strip()[-500:]}")


def create(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"), "-days", "3650",
        "-subj", "/CN=infleet-dev-ca", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(d / "apiserver.key"), "-out", str(d / "apiserver.crt"), "-days", "3650",
        "-subj", "/CN=kube-apiserver", "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
        "-addext", f"subjectAltName={','.join(SANS)}",
        "-addext", "extendedKeyUsage=serverAuth", "-addext", "basicConstraints=CA:FALSE",
    )
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", str(d / "sa.key"))
    _openssl("pkey", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub"))
    tokens = {user: secrets.token_hex(24) for user in USERS}
    lines = [
        f'{tokens[user]},{user},{user}' + (f',"{",".join(groups)}"' if groups else "")
        for user, groups in USERS.items()
    ]
    (d / "tokens.csv").write_text("\n".join(lines) + "\n")
    for path in d.iterdir():
        path.chmod(0o600)
    return Pki(d, tokens)


def load(directory: Path) -> Pki:
    tokens: dict[str, str] = {}
    for line in (directory / "tokens.csv").read_text().splitlines():
        token, user = line.split(",")[:2]
        tokens[user] = token
    return Pki(directory, tokens)
