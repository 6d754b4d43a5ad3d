"""A real OpenID Connect provider on 127.0.0.1 for the tests: oauth2-mock-server
(npm, installed under tests/idp by `npm ci --prefix tests/idp`) behind the
launcher tests/idp/server.js. It serves real discovery and JWKS documents and
signs real tokens; tests mint tokens with the claims they choose and add or
remove keys through its control API. Readiness is its --ready-file."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

from .procs import Proc, start_with_ready_file

REPO = Path(__file__).resolve().parents[2]
IDP_DIR = REPO / "tests" / "idp"


def node_exe() -> str:
    exe = shutil.which("node")
    if exe is None:
        raise RuntimeError("node is not on PATH (apt-get install nodejs npm)")
    if not (IDP_DIR / "node_modules" / "oauth2-mock-server").is_dir():
        raise RuntimeError(f"oauth2-mock-server is not installed: npm ci --prefix {IDP_DIR}")
    return exe


class Idp:
    """One IdP process. `restart()` brings it back on the same port with the
    same keys (they are kept in a file), as a provider that was down."""

    def __init__(self, tmp: Path, name: str = "idp", tls: "IdpCa | None" = None):
        """With `tls`, the IdP serves https with a certificate for 127.0.0.1
        signed by that CA."""
        self.tmp, self.name, self.tls = tmp, name, tls
        self.keys_file = tmp / f"{name}.keys.json"
        self.ready = tmp / f"{name}.ready.json"
        self.log_path = tmp / f"{name}.log"
        self.port: int | None = None
        self.proc: Proc | None = None

    @property
    def issuer(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> "Idp":
        argv = [node_exe(), str(IDP_DIR / "server.js"), "--ready-file", str(self.ready),
                "--keys-file", str(self.keys_file), "--port", str(self.port or 0)]  # fmt: skip
        if self.tls:
            cert, key = self.tls.leaf(self.tmp, self.name)
            argv += ["--tls-cert", str(cert), "--tls-key", str(key)]
        self.proc, addr = start_with_ready_file(
            self.name, argv, self.ready, "addr", self.log_path, append=self.port is not None, timeout=timeout,
        )
        self.port = int(addr.rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.issuer + path, data=data, method=method,
                                     headers={"content-type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=10, context=self._ssl()) as r:
            return json.loads(r.read())

    def _ssl(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.tls.cert)) if self.tls else None

    def token(self, claims: dict | None = None, *, drop: list[str] = (), kid: str | None = None,
              expires_in: int | None = None, header: dict | None = None) -> str:  # fmt: skip
        """A token the IdP signs: its iss, iat, nbf (now - 10 s) and exp (now +
        `expires_in`, default an hour), then `claims`, minus `drop`; signed with
        key `kid` (default: the IdP's next key), its JOSE header amended with
        `header` (a `kid` there names a key the signature is not from)."""
        body = {"claims": claims or {}, "drop": list(drop), "header": header or {}}
        if kid is not None:
            body["kid"] = kid
        if expires_in is not None:
            body["expires_in"] = expires_in
        return self._call("POST", "/_control/token", body)["token"]

    def add_key(self, kid: str, alg: str = "RS256") -> dict:
        """Generates a key; returns its public JWK."""
        return self._call("POST", "/_control/keys", {"alg": alg, "kid": kid})

    def remove_key(self, kid: str) -> list[str]:
        """Removes a key from the JWKS; returns the kids that remain."""
        return self._call("DELETE", f"/_control/keys/{kid}")["keys"]

    def hits(self, path: str) -> int:
        """How many requests for `path` (`/jwks`, discovery) the IdP served."""
        return self._call("GET", "/_control/stats")["hits"].get(path, 0)

    def jwks(self) -> dict:
        """The JWKS, as anyone can read it."""
        with urllib.request.urlopen(self.issuer + "/jwks", timeout=10, context=self._ssl()) as r:
            return json.loads(r.read())


class IdpCa:
    """A throwaway CA (openssl), for an IdP that s3gate reaches over https
    with `ca_bundle`."""

    def __init__(self, dir: Path):
        self.dir = dir
        self.cert, self.key = dir / "test-ca.pem", dir / "test-ca.key"
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key, "-out", self.cert,
                "-days", "2", "-subj", "/CN=s3gate test IdP CA")  # fmt: skip

    def leaf(self, dir: Path, name: str) -> tuple[Path, Path]:
        """A server certificate for 127.0.0.1 and its key."""
        cert, key, csr, ext = (dir / f"{name}.{x}" for x in ("pem", "key", "csr", "ext"))
        ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
        openssl("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key, "-CAcreateserial",
                "-out", cert, "-days", "2", "-extfile", ext)  # fmt: skip
        return cert, key


def openssl(*args) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
