"""Real registries for the tests: Debian's docker-registry (distribution 2.8) on 127.0.0.1, one open and
one behind htpasswd, with images pushed by skopeo; and the fault proxy (faultproxy.py) in front.

Every process is started here and stopped by its own pid; storage lives under pytest's tmp dirs.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import RECIPES

REGISTRY_BIN = "/usr/bin/docker-registry"
USER, PASSWORD = "nsbuild", "s3cret-pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 15
    unverified = ssl.create_default_context()  # a self-signed registry is up as well
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1, context=unverified).close()
            return
        except urllib.error.HTTPError:
            return  # 401 from the htpasswd registry: it is up
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer at {url}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Registry:
    host: str    # 127.0.0.1:PORT
    port: int
    root: Path   # its storage and config

    def ref(self, repo_tag: str) -> str:
        return f"docker://{self.host}/{repo_tag}"


def start_registry(root: Path, htpasswd: bool, addr: str = "127.0.0.1",
                   tls: bool = False) -> tuple[Registry, subprocess.Popen]:
    """tls: HTTPS with a self-signed certificate for `addr`, root / "cert.pem"."""
    if not os.path.exists(REGISTRY_BIN):
        pytest.fail(f"{REGISTRY_BIN} is missing: apt-get install docker-registry (README set-up 2)")
    root.mkdir(parents=True)
    port = free_port()
    auth = ""
    if htpasswd:
        line = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, text=True, check=True).stdout
        (root / "htpasswd").write_text(line)
        auth = f"auth:\n  htpasswd:\n    realm: nsbuild-test\n    path: {root / 'htpasswd'}\n"
    listen = f"http:\n  addr: {addr}:{port}\n"
    if tls:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=nsbuild-test", "-addext", f"subjectAltName=IP:{addr}", "-keyout", str(root / "key.pem"),
                        "-out", str(root / "cert.pem")], check=True, capture_output=True)
        listen += f"  tls:\n    certificate: {root / 'cert.pem'}\n    key: {root / 'key.pem'}\n"
    (root / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"  delete:\n    enabled: true\n{listen}{auth}")
    with open(root / "log", "wb") as log:
        proc = subprocess.Popen([REGISTRY_BIN, "serve", str(root / "config.yml")], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)
    wait_http(f"{'https' if tls else 'http'}://{addr}:{port}/v2/", proc, "docker-registry")
    return Registry(f"{addr}:{port}", port, root), proc


def outward_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.254", 9))  # TEST-NET-1: only the route is looked up
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


def skopeo(*args: str) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", *args], check=True, capture_output=True, env=_skopeo_env())


def _skopeo_env() -> dict[str, str]:
    # skopeo's own auth file and blob cache stay out of the user's home
    env = dict(os.environ)
    env.pop("XDG_RUNTIME_DIR", None)
    return env


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    """The demo layout recompressed with zstd, and a two-platform index (host and s390x/other) of it."""
    root = tmp_path_factory.mktemp("images")
    skopeo("--dest-compress-format", "zstd", f"oci:{RECIPES / 'oci/layout'}:demo", f"oci:{root / 'zstd'}:demo")
    multi_platform(root / "multi", ["host", "other"])
    multi_platform(root / "foreign", ["other"])
    return root


OTHER_ARCH = "s390x" if os.uname().machine != "s390x" else "amd64"


def multi_platform(layout: Path, which: list[str]) -> dict[str, str]:
    """A copy of the demo layout whose tag `v1` is an index of the demo image for the host's platform
    and/or the same layers labelled OTHER_ARCH; returns {which: manifest digest}."""
    import hashlib

    from builder.layers import oci

    shutil.copytree(RECIPES / "oci/layout", layout)
    blobs = layout / "blobs" / "sha256"

    def put(doc: dict) -> dict:
        data = json.dumps(doc, sort_keys=True).encode()
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    index = json.loads((layout / "index.json").read_text())
    manifest_desc = index["manifests"][0]
    manifest = json.loads((blobs / manifest_desc["digest"][7:]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_text())
    entries, digests = [], {}
    for name in which:
        os_, arch, _ = oci.host_platform() if name == "host" else ("linux", OTHER_ARCH, "")
        cfg = put(dict(config, architecture=arch, os=os_))
        m = put(dict(manifest, config=dict(manifest["config"], **cfg)))
        entries.append({"mediaType": manifest["mediaType"], **m, "platform": {"os": os_, "architecture": arch}})
        digests[name] = m["digest"]
    idx = put({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries})
    (layout / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", **idx,
                       "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}))
    (layout / "digests.json").write_text(json.dumps(digests))
    return digests


@pytest.fixture(scope="session")
def registry(tmp_path_factory, images: Path) -> Iterator[Registry]:
    """An open registry holding demo:gzip, demo:zstd and multi:v1 (an index without the host platform
    besides one with it: multi:v1 has both, other:v1 only a foreign one)."""
    reg, proc = start_registry(tmp_path_factory.mktemp("registry") / "open", htpasswd=False)
    try:
        dest = "--dest-tls-verify=false"
        skopeo(dest, f"oci:{RECIPES / 'oci/layout'}:demo", f"docker://{reg.host}/demo:gzip")
        skopeo(dest, f"oci:{images / 'zstd'}:demo", f"docker://{reg.host}/demo:zstd")
        skopeo(dest, "--all", f"oci:{images / 'multi'}:v1", f"docker://{reg.host}/multi:v1")
        skopeo(dest, "--all", f"oci:{images / 'foreign'}:v1", f"docker://{reg.host}/foreign:v1")
        yield reg
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory) -> Iterator[Registry]:
    """A registry behind htpasswd (HTTP Basic), holding demo:gzip."""
    reg, proc = start_registry(tmp_path_factory.mktemp("registry") / "auth", htpasswd=True)
    try:
        skopeo("--dest-tls-verify=false", f"--dest-creds={USER}:{PASSWORD}",
               f"oci:{RECIPES / 'oci/layout'}:demo", f"docker://{reg.host}/demo:gzip")
        yield reg
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def outward_registry(tmp_path_factory) -> Iterator[Registry]:
    """A plain-HTTP registry on a non-loopback address, holding demo:gzip: nsbuild must not speak
    HTTP to it unless registries.conf marks it insecure."""
    addr = outward_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to serve a registry on")
    reg, proc = start_registry(tmp_path_factory.mktemp("registry") / "outward", htpasswd=False, addr=addr)
    try:
        skopeo("--dest-tls-verify=false", f"oci:{RECIPES / 'oci/layout'}:demo", f"docker://{reg.host}/demo:gzip")
        yield reg
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory) -> Iterator[Registry]:
    """An HTTPS registry with a self-signed certificate (its root / "cert.pem") on a non-loopback address,
    holding demo:gzip."""
    addr = outward_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to serve a registry on")
    reg, proc = start_registry(tmp_path_factory.mktemp("registry") / "tls", htpasswd=False, addr=addr, tls=True)
    try:
        skopeo("--dest-tls-verify=false", f"oci:{RECIPES / 'oci/layout'}:demo", f"docker://{reg.host}/demo:gzip")
        yield reg
    finally:
        stop(proc)


@dataclass
class Proxy:
    host: str
    log: Path

    def ref(self, repo_tag: str) -> str:
        return f"docker://{self.host}/{repo_tag}"

    def requests(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def fault_proxy(registry: Registry, tmp_path: Path) -> Iterator:
    """fault_proxy(MODE) starts faultproxy.py in front of `registry`; stopped after the test."""
    procs: list[subprocess.Popen] = []

    def start(mode: str) -> Proxy:
        n = len(procs)
        port_file, log = tmp_path / f"proxy{n}.port", tmp_path / f"proxy{n}.log"
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("faultproxy.py")), str(registry.port),
                                 str(port_file), str(log), mode], stdin=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the fault proxy did not start")
            time.sleep(0.02)
        return Proxy(f"127.0.0.1:{port_file.read_text()}", log)

    yield start
    for proc in procs:
        stop(proc)


def docker_config(home: Path, host: str, user: str = USER, password: str = PASSWORD) -> None:
    """~/.docker/config.json with a login for `host`, as `docker login` writes it."""
    import base64

    (home / ".docker").mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (home / ".docker" / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))


def have_tools() -> bool:
    return all(shutil.which(t) for t in ("skopeo", "htpasswd")) and os.path.exists(REGISTRY_BIN)
