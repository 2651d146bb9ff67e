"""Pulling docker:// layers from real registries (Debian's docker-registry on 127.0.0.1, images pushed
with skopeo), through a fault-injecting proxy for the failures."""
from __future__ import annotations

import base64
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import RECIPES, needs_root, tally
from registries import (PASSWORD, USER, auth_registry, docker_config, fault_proxy, images,  # noqa: F401
                        outward_registry, registry, skopeo, tls_registry)

from builder.images import auth, pull
from builder.images import registry as reg
from builder.images import registriesconf
from builder.errors import NsbuildError

pytestmark = needs_root


def recipe(tmp_path: Path, ref: str, extra: str = "", name: str = "r.toml") -> Path:
    """recipes/oci.toml with its layer pulled from `ref` (the demo image: prints "from layer 2", "c")."""
    text = (RECIPES / "oci.toml").read_text().replace('oci = "oci/layout"', f'oci = "{ref}"{extra}')
    path = tmp_path / name
    path.write_text(text.replace('ref = "demo"', ""))
    return path


def store_entries(tmp_path: Path) -> list[str]:
    top = tmp_path / "store" / "sha256"
    return sorted(os.listdir(top)) if top.exists() else []


@pytest.mark.parametrize("tag", ["gzip", "zstd"])
def test_pull_builds_and_runs(nsbuild, registry, tmp_path: Path, tag: str) -> None:
    proc = nsbuild("build", str(recipe(tmp_path, registry.ref(f"demo:{tag}"))), "--quiet")
    assert proc.stdout == "" and proc.stderr == ""  # --quiet, and no terminal: no bars
    assert nsbuild("run", "oci").stdout == "from layer 2\nc\n"
    assert len(store_entries(tmp_path)) == 2 and all(e.endswith("-oci") for e in store_entries(tmp_path))
    assert os.listdir(tmp_path / "store" / "tmp") == []  # the downloads are gone once unpacked
    assert len(os.listdir(tmp_path / "store" / "blobs")) == 2  # manifest and config, for warm pulls
    nsbuild("rm", "oci")


def path_with_logged_curl(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """$PATH with a `curl` first that logs its arguments and runs the real one; and the log."""
    bin_dir, log = tmp_path / "bin", tmp_path / "curl.log"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text(f"#!/bin/sh\nprintf '%s ' \"$@\" | tr '\\n' ' ' >> {log}\necho >> {log}\n"
                                  'exec /usr/bin/curl "$@"\n')  # one line per run
    (bin_dir / "curl").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


def cached_plan_written(nsbuild) -> int:
    """When the recipe's one cached plan was written (a build from the cached plan does not rewrite it)."""
    plans = Path(nsbuild.env["NSBUILD_STATE_DIR"]) / ".plans"
    (entry,) = os.listdir(plans)
    return (plans / entry).stat().st_mtime_ns


@pytest.mark.parametrize("asker", ["curl", "http.client"])
def test_warm_pull_asks_only_for_the_manifest(nsbuild, fault_proxy, tmp_path: Path, asker: str) -> None:
    proxy = fault_proxy("pass")
    r = recipe(tmp_path, proxy.ref("demo:gzip"))
    nsbuild("build", str(r))
    cold = proxy.requests()
    assert sum("/blobs/" in line for line in cold) == 3, cold  # config and two layers
    nsbuild("build", str(r), "--replace")  # planned anew (the first build pinned the template namespace)
    warm = proxy.requests()[len(cold):]
    assert warm == ["GET /v2/demo/manifests/gzip - -> 200"], warm
    path, curl_log = path_with_logged_curl(tmp_path)
    if asker == "http.client":  # no curl on $PATH: the standard library asks
        path = {"PATH": str(tmp_path / "empty")}
    nsbuild("build", str(r), "--replace", env=dict(nsbuild.env, **path))  # the cached plan: the tag did not move
    cached = proxy.requests()[len(cold) + len(warm):]
    assert cached == ["HEAD /v2/demo/manifests/gzip - -> 200"], cached
    asked = curl_log.read_text().splitlines() if curl_log.exists() else []
    assert len(asked) == (asker == "curl") and all(line.startswith("-q ") for line in asked), asked
    assert nsbuild("run", "oci").stdout == "from layer 2\nc\n"
    nsbuild("rm", "oci")


def test_a_moved_tag_is_pulled_again_not_taken_from_the_cached_plan(nsbuild, registry, images: Path,
                                                                    tmp_path: Path) -> None:
    dest = "--dest-tls-verify=false"
    skopeo(dest, f"oci:{RECIPES / 'oci/layout'}:demo", registry.ref("retag:v1"))
    r = recipe(tmp_path, registry.ref("retag:v1"))
    nsbuild("build", str(r))
    gzip_entries = store_entries(tmp_path)
    nsbuild("build", str(r), "--replace")  # the plan is cached now (the first build pinned the template)
    nsbuild("build", str(r), "--replace")  # the cached plan
    assert store_entries(tmp_path) == gzip_entries
    plans = Path(nsbuild.env["NSBUILD_STATE_DIR"]) / ".plans"
    assert len(os.listdir(plans)) == 1
    skopeo(dest, f"oci:{images / 'zstd'}:demo", registry.ref("retag:v1"))  # same tree, other blobs
    nsbuild("build", str(r), "--replace")
    entries = store_entries(tmp_path)
    assert len(entries) == 4 and set(gzip_entries) < set(entries)  # the zstd blobs were pulled and unpacked
    meta = json.loads((Path(nsbuild.env["NSBUILD_STATE_DIR"]) / "oci.json").read_text())
    assert set(meta["store"]) == set(entries) - set(gzip_entries)  # and the sandbox uses them
    assert nsbuild("run", "oci").stdout == "from layer 2\nc\n"
    nsbuild("rm", "oci")


def test_a_digest_reference_needs_no_request_when_warm(nsbuild, fault_proxy, registry, tmp_path: Path) -> None:
    digest = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", registry.ref("demo:gzip")],
                                       capture_output=True, text=True, check=True).stdout)["Digest"]
    proxy = fault_proxy("pass")
    r = recipe(tmp_path, proxy.ref(f"demo@{digest}"))
    nsbuild("build", str(r))
    n = len(proxy.requests())
    nsbuild("build", str(r), "--replace")  # a digest cannot move: the cached plan runs, nothing is asked
    assert len(proxy.requests()) == n
    nsbuild("rm", "oci")


def test_lock_pins_the_manifest_and_a_moved_tag_is_drift(nsbuild, registry, images: Path, tmp_path: Path) -> None:
    dest = "--dest-tls-verify=false"
    skopeo(dest, f"oci:{RECIPES / 'oci/layout'}:demo", registry.ref("moving:v1"))
    r = recipe(tmp_path, registry.ref("moving:v1"))
    nsbuild("lock", str(r))
    locked = json.loads(Path(f"{r}.lock").read_text())["layers"]["layer[0]"]
    assert locked["kind"] == "oci" and locked["source"] == registry.ref("moving:v1")
    nsbuild("build", str(r), "--locked")
    skopeo(dest, f"oci:{images / 'zstd'}:demo", registry.ref("moving:v1"))  # the tag moves
    proc = nsbuild("build", str(r), "--locked", "--replace", check=False)
    assert proc.returncode == 2 and "layer[0]" in proc.stderr and "drifted" in proc.stderr, proc.stderr
    assert locked["sha256"] in proc.stderr
    nsbuild("rm", "oci")


def test_a_pinned_sha256_that_differs_is_refused_before_any_blob(nsbuild, registry, state_dir: Path,
                                                                 tmp_path: Path) -> None:
    proc = nsbuild("build", str(recipe(tmp_path, registry.ref("demo:gzip"), f'\nsha256 = "{"0" * 64}"')),
                   check=False)
    assert proc.returncode == 2 and "layer[0].sha256" in proc.stderr, proc.stderr
    assert store_entries(tmp_path) == [] and not state_dir.exists()


def test_an_index_is_resolved_by_platform(nsbuild, registry, images: Path, tmp_path: Path) -> None:
    digests = json.loads((images / "multi" / "digests.json").read_text())
    r = recipe(tmp_path, registry.ref("multi:v1"))
    nsbuild("lock", str(r))
    assert json.loads(Path(f"{r}.lock").read_text())["layers"]["layer[0]"]["sha256"] == digests["host"][7:]
    from registries import OTHER_ARCH

    other = recipe(tmp_path, registry.ref("multi:v1"), f'\nplatform = "linux/{OTHER_ARCH}"', "other.toml")
    nsbuild("lock", str(other))
    assert json.loads(Path(f"{other}.lock").read_text())["layers"]["layer[0]"]["sha256"] == digests["other"][7:]
    nsbuild("build", str(r))
    assert nsbuild("run", "oci").stdout == "from layer 2\nc\n"
    nsbuild("rm", "oci")


# --- auth

def test_basic_auth_from_docker_config(nsbuild, auth_registry, tmp_path: Path) -> None:
    r = recipe(tmp_path, auth_registry.ref("demo:gzip"))
    home = tmp_path / "home"
    home.mkdir()
    nsbuild.env["HOME"] = str(home)
    nsbuild.env.pop("XDG_RUNTIME_DIR", None)
    proc = nsbuild("build", str(r), check=False)
    assert proc.returncode == 1 and "needs a login" in proc.stderr and auth_registry.host in proc.stderr
    assert store_entries(tmp_path) == []
    docker_config(home, auth_registry.host, password="wrong")
    proc = nsbuild("build", str(r), check=False)
    assert proc.returncode == 1 and "authentication failed (401" in proc.stderr, proc.stderr
    docker_config(home, auth_registry.host)
    nsbuild("build", str(r))
    assert nsbuild("run", "oci").stdout == "from layer 2\nc\n"
    nsbuild("build", str(r), "--replace")  # planned anew (the first build pinned the template)
    written = cached_plan_written(nsbuild)
    nsbuild("build", str(r), "--replace")  # the warm HEAD logs in as the pull did: the cached plan
    assert cached_plan_written(nsbuild) == written
    nsbuild("rm", "oci")
    lock = Path(nsbuild("lock", str(r)).stdout.split()[-1]).read_text()
    assert PASSWORD not in lock and base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in lock


def test_bearer_token_auth_with_credentials_from_containers_auth_json(nsbuild, fault_proxy, tmp_path: Path) -> None:
    proxy = fault_proxy(f"token:{USER}:{PASSWORD}")
    r = recipe(tmp_path, proxy.ref("demo:gzip"))
    runtime = tmp_path / "xdg"
    (runtime / "containers").mkdir(parents=True)
    nsbuild.env["XDG_RUNTIME_DIR"] = str(runtime)
    nsbuild.env["HOME"] = str(tmp_path / "nohome")
    auth = runtime / "containers" / "auth.json"
    auth.write_text(json.dumps({"auths": {proxy.host: {"auth": base64.b64encode(b"nsbuild:nope").decode()}}}))
    proc = nsbuild("build", str(r), check=False)
    assert proc.returncode == 1 and "token service" in proc.stderr and "refused (401" in proc.stderr, proc.stderr
    auth.write_text(json.dumps({"auths": {proxy.host: {
        "auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))
    nsbuild("build", str(r))
    assert any(line.startswith("GET /token?") and line.endswith("200") for line in proxy.requests())
    assert nsbuild("run", "oci").stdout == "from layer 2\nc\n"
    nsbuild("rm", "oci")


@pytest.mark.parametrize("asker", ["curl", "http.client"])
@pytest.mark.parametrize("login", ["auth.json", "helper", "anonymous"])
def test_warm_pull_of_a_token_registry_takes_the_cached_plan(nsbuild, fault_proxy, tmp_path: Path, asker: str,
                                                              login: str) -> None:
    proxy = fault_proxy("token:" if login == "anonymous" else f"token:{USER}:{PASSWORD}")
    r = recipe(tmp_path, proxy.ref("demo:gzip"))
    if login == "auth.json":
        (tmp_path / "xdg" / "containers").mkdir(parents=True)
        nsbuild.env["XDG_RUNTIME_DIR"] = str(tmp_path / "xdg")
        (tmp_path / "xdg" / "containers" / "auth.json").write_text(json.dumps({"auths": {proxy.host: {
            "auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))
    if login == "helper":  # as ECR's or gcloud's: docker's config names a program that has the login
        helper_log = credential_helper(tmp_path / "helpers", "test", {proxy.host: f"{USER}:{PASSWORD}"})
        nsbuild.env.update(HOME=str(tmp_path), PATH=f"{tmp_path / 'helpers'}:{nsbuild.env['PATH']}")
        (tmp_path / ".docker").mkdir()
        (tmp_path / ".docker" / "config.json").write_text(json.dumps({"credHelpers": {proxy.host: "test"}}))
    nsbuild("build", str(r))
    nsbuild("build", str(r), "--replace")  # planned anew (the first build pinned the template)
    n = len(proxy.requests())
    path, curl_log = path_with_logged_curl(tmp_path)
    path["PATH"] = f"{path['PATH']}:{nsbuild.env['PATH']}"
    if asker == "http.client":  # no curl, but the helper still
        path = {"PATH": str(tmp_path / "helpers")}
    nsbuild("build", str(r), "--replace", env=dict(nsbuild.env, **path))
    if login == "helper":
        assert helper_log.read_text().splitlines() == [f"get {proxy.host}"] * 3  # the cold, the planned, the warm
    asked = proxy.requests()[n:]
    assert asked[0] == "HEAD /v2/demo/manifests/gzip - -> 401" and asked[2:] == ["HEAD /v2/demo/manifests/gzip - -> 200"]
    assert asked[1].startswith("GET /token?scope=repository%3Ademo%3Apull&service=nsbuild-test") \
        and asked[1].endswith("-> 200"), asked  # and no GET of the manifest: the cached plan ran
    if asker == "curl":  # neither the password nor the token is on curl's command line
        seen = curl_log.read_text()
        assert len(seen.splitlines()) == 3 and PASSWORD not in seen and "nsbuild-test-token" not in seen
        assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in seen
    assert nsbuild("run", "oci").stdout == "from layer 2\nc\n"
    nsbuild("rm", "oci")


# --- faults

@pytest.mark.parametrize("mode", ["drop-once", "5xx-once"])
def test_dropped_connections_and_a_5xx_are_retried(nsbuild, fault_proxy, tmp_path: Path, mode: str) -> None:
    proxy = fault_proxy(mode)
    nsbuild("build", str(recipe(tmp_path, proxy.ref("demo:gzip"))))
    assert nsbuild("run", "oci").stdout == "from layer 2\nc\n"
    if mode == "drop-once":  # the blob resumed where it broke off
        assert any("/blobs/" in line and "bytes=" in line and line.endswith("206") for line in proxy.requests())
    nsbuild("rm", "oci")
    tally("registry faults recovered from")


FAULTS = {  # mode -> what the error says
    "drop-always": "is truncated: the connection broke after",
    "short-always": "is truncated: the connection ended after",
    "5xx-always": "the registry failed (503",
    "corrupt": "wrong digest",
    "status:401": "authentication failed (401",
    "status:403": "access denied (403",
    "status:404": "not found (404",
    "status:429": "too many requests (429",
    "status:500": "the registry failed (500",
    "mediatype": "unknown media type 'application/vnd.example.unknown+json'",
}


@pytest.mark.parametrize("mode", sorted(FAULTS))
def test_registry_faults_are_one_error_and_leave_nothing(nsbuild, fault_proxy, state_dir: Path, tmp_path: Path,
                                                         mode: str) -> None:
    proxy = fault_proxy(mode)
    proc = nsbuild("build", str(recipe(tmp_path, proxy.ref("demo:gzip"))), check=False)
    assert proc.returncode == 1, proc.stderr
    assert FAULTS[mode] in proc.stderr and f"layer[0]: registry {proxy.host}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 2
    assert store_entries(tmp_path) == [] and not state_dir.exists()
    assert not (tmp_path / "store" / "tmp").exists() or os.listdir(tmp_path / "store" / "tmp") == []
    tally("registry faults reported, nothing left in the store")


def test_unreachable_registry(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    from registries import free_port

    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    proc = nsbuild("build", str(recipe(tmp_path, f"docker://{host}/demo:gzip")), check=False)
    assert proc.returncode == 1 and f"layer[0]: registry {host}: cannot reach http://{host}" in proc.stderr
    assert "Connection refused" in proc.stderr, proc.stderr
    assert store_entries(tmp_path) == [] and not state_dir.exists()


def test_a_platform_the_index_lacks(nsbuild, registry, state_dir: Path, tmp_path: Path) -> None:
    proc = nsbuild("build", str(recipe(tmp_path, registry.ref("foreign:v1"))), check=False)
    assert proc.returncode == 1 and "has no image for platform" in proc.stderr, proc.stderr
    assert registry.host in proc.stderr and "layer[0]" in proc.stderr
    assert store_entries(tmp_path) == [] and not state_dir.exists()


@pytest.mark.parametrize("ref", ["docker://demo:gzip", "docker://Registry.Example/Demo", "docker://host.example/demo@sha256:abc",
                                 "docker://host.example/demo:bad*tag", "docker://host.example/"])
def test_bad_references_are_recipe_errors(nsbuild, state_dir: Path, tmp_path: Path, ref: str) -> None:
    proc = nsbuild("build", str(recipe(tmp_path, ref)), check=False)
    assert proc.returncode == 2 and "layer[0].oci" in proc.stderr, proc.stderr
    assert not (tmp_path / "store").exists() and not state_dir.exists()


def test_plain_http_beyond_loopback_only_where_registries_conf_allows_it(nsbuild, outward_registry,
                                                                        tmp_path: Path) -> None:
    r = recipe(tmp_path, outward_registry.ref("demo:gzip"))
    conf = tmp_path / "registries.conf"
    env = dict(nsbuild.env, CONTAINERS_REGISTRIES_CONF=str(conf))  # an empty policy: HTTPS only
    refused = nsbuild("build", str(r), check=False, env=env)
    assert refused.returncode == 1, refused.stderr
    assert f"layer[0]: registry {outward_registry.host}: cannot reach https://{outward_registry.host}" in refused.stderr
    assert f'[[registry]] location = "{outward_registry.host}" insecure = true' in refused.stderr
    assert "Traceback" not in refused.stderr and store_entries(tmp_path) == []

    conf.write_text(f'[[registry]]\nlocation = "{outward_registry.host}"\ninsecure = true\n')
    nsbuild("build", str(r), "--quiet", env=env)
    assert nsbuild("run", "oci", env=env).stdout == "from layer 2\nc\n"
    nsbuild("build", str(r), "--replace", env=env)  # the cached plan: its HEAD goes where the pull went

    conf.write_text(f'[[registry]]\nprefix = "{outward_registry.host}/demo"\nblocked = true\n')
    blocked = nsbuild("build", str(r), "--replace", check=False, env=env)  # the changed file drops the plan
    assert blocked.returncode == 1 and f"{outward_registry.ref('demo:gzip')} is blocked by {conf}" in blocked.stderr
    assert nsbuild("run", "oci", env=env).stdout == "from layer 2\nc\n"  # the old sandbox is untouched
    nsbuild("rm", "oci", env=env)


@pytest.mark.parametrize("asker", ["curl", "http.client"])
def test_https_registry_trusted_or_insecure_and_its_warm_builds_take_the_cached_plan(nsbuild, tls_registry,
                                                                                      tmp_path: Path, asker: str) -> None:
    r = recipe(tmp_path, tls_registry.ref("demo:gzip"))
    conf = tmp_path / "registries.conf"
    env = dict(nsbuild.env, CONTAINERS_REGISTRIES_CONF=str(conf))
    if asker == "http.client":
        env["PATH"] = str(tmp_path / "empty")
    refused = nsbuild("build", str(r), check=False, env=env)  # self-signed, not trusted: refused, with the hint
    assert refused.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr, refused.stderr
    assert f'[[registry]] location = "{tls_registry.host}" insecure = true' in refused.stderr
    assert "Traceback" not in refused.stderr and store_entries(tmp_path) == []

    trusted = dict(env, SSL_CERT_FILE=str(tls_registry.root / "cert.pem"))  # read by OpenSSL, so by both askers
    nsbuild("build", str(r), "--quiet", env=trusted)
    nsbuild("build", str(r), "--replace", env=trusted)  # planned anew (the first build pinned the template)
    written = cached_plan_written(nsbuild)
    nsbuild("build", str(r), "--replace", env=trusted)  # the HEAD checked the certificate: the cached plan
    assert cached_plan_written(nsbuild) == written
    assert nsbuild("build", str(r), "--replace", check=False, env=env).returncode == 1  # untrusted again: refused

    conf.write_text(f'[[registry]]\nlocation = "{tls_registry.host}"\ninsecure = true\n')
    nsbuild("build", str(r), "--replace", env=env)  # planned anew: registries.conf changed
    written = cached_plan_written(nsbuild)
    nsbuild("build", str(r), "--replace", env=env)  # the HEAD skipped the certificate as the pull did
    assert cached_plan_written(nsbuild) == written
    assert nsbuild("run", "oci", env=env).stdout == "from layer 2\nc\n"
    nsbuild("rm", "oci", env=env)


def test_registries_conf_mirrors_and_locations_are_followed(nsbuild, fault_proxy, tmp_path: Path) -> None:
    primary, mirror = fault_proxy("pass"), fault_proxy("pass")
    conf = tmp_path / "registries.conf"
    env = dict(nsbuild.env, CONTAINERS_REGISTRIES_CONF=str(conf))
    r = recipe(tmp_path, primary.ref("demo:gzip"))
    # a mirror without the image (another namespace), then one with it: the second serves all of the pull
    conf.write_text(f'[[registry]]\nlocation = "{primary.host}"\n'
                    f'[[registry.mirror]]\nlocation = "{mirror.host}/elsewhere"\n'
                    f'[[registry.mirror]]\nlocation = "{mirror.host}"\n')
    nsbuild("build", str(r), env=env)
    assert primary.requests() == []
    pulled = mirror.requests()
    assert pulled[0] == "GET /v2/elsewhere/demo/manifests/gzip - -> 404", pulled
    assert pulled[1] == "GET /v2/demo/manifests/gzip - -> 200" and sum("/v2/demo/blobs/" in p for p in pulled) == 3
    assert nsbuild("run", "oci", env=env).stdout == "from layer 2\nc\n"
    nsbuild("build", str(r), "--replace", env=env)  # planned anew (the first build pinned the template)
    n = len(mirror.requests())
    nsbuild("build", str(r), "--replace", env=env)  # the cached plan asks the mirror that served the pull
    assert mirror.requests()[n:] == ["HEAD /v2/demo/manifests/gzip - -> 200"], mirror.requests()[n:]
    assert primary.requests() == []

    # a digest-only mirror serves no pull by tag: the primary location does
    conf.write_text(f'[[registry]]\nlocation = "{primary.host}"\n'
                    f'[[registry.mirror]]\nlocation = "{mirror.host}"\npull-from-mirror = "digest-only"\n')
    n = len(mirror.requests())
    nsbuild("build", str(r), "--replace", env=env)
    assert primary.requests()[0] == "GET /v2/demo/manifests/gzip - -> 200" and len(mirror.requests()) == n

    # a name no resolver knows, pulled from the location its prefix is rewritten to
    nowhere = recipe(tmp_path, "docker://registry.nsbuild.invalid/team/demo:gzip", name="nowhere.toml")
    conf.write_text(f'[[registry]]\nprefix = "registry.nsbuild.invalid/team"\nlocation = "{primary.host}"\n')
    n = len(primary.requests())
    nsbuild("build", str(nowhere), "--replace", env=env)
    assert primary.requests()[n] == "GET /v2/demo/manifests/gzip - -> 200"
    assert nsbuild("run", "oci", env=env).stdout == "from layer 2\nc\n"

    # nowhere has it: the primary's error, with the mirror's in the hint; nothing stored
    conf.write_text(f'[[registry]]\nprefix = "registry.nsbuild.invalid/team"\nlocation = "{primary.host}/gone"\n'
                    f'[[registry.mirror]]\nlocation = "{mirror.host}/lost"\n')
    before = store_entries(tmp_path)
    failed = nsbuild("build", str(nowhere), "--replace", check=False, env=env)
    assert failed.returncode == 1 and f"registry {primary.host}: manifest gzip of {primary.ref('gone/demo:gzip')}: " \
        "not found (404" in failed.stderr, failed.stderr
    assert f"a mirror failed before: layer[0]: registry {mirror.host}: manifest gzip of " \
        f"{mirror.ref('lost/demo:gzip')}: not found" in failed.stderr and "Traceback" not in failed.stderr
    assert store_entries(tmp_path) == before
    nsbuild("rm", "oci", env=env)


# --- no network needed

def test_registries_conf_endpoints(tmp_path: Path, monkeypatch) -> None:
    conf = tmp_path / "registries.conf"
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))
    conf.write_text(
        '[[registry]]\nprefix = "example.com/foo"\nlocation = "internal.example.net/bar"\n'
        '[[registry.mirror]]\nlocation = "m1.example"\ninsecure = true\n'
        '[[registry.mirror]]\nlocation = "m2.example/cache"\npull-from-mirror = "digest-only"\n'
        '[[registry.mirror]]\nlocation = "m3.example"\npull-from-mirror = "tag-only"\n'
        '[[registry]]\nprefix = "*.corp.example"\nlocation = "proxy.corp.example:5000/hub"\n'
        '[[registry]]\nlocation = "plain.example"\nmirror-by-digest-only = true\n'
        '[[registry.mirror]]\nlocation = "m4.example"\n')
    name = "example.com/foo/app"
    p = registriesconf.policy("example.com", "foo/app")
    assert p.endpoints(name, by_digest=False) == [
        ("m1.example/app", True), ("m3.example/app", False), ("internal.example.net/bar/app", False)]
    assert p.endpoints(name, by_digest=True) == [
        ("m1.example/app", True), ("m2.example/cache/app", False), ("internal.example.net/bar/app", False)]
    assert registriesconf.policy("a.b.corp.example", "x/y").endpoints("a.b.corp.example/x/y", False) == [
        ("proxy.corp.example:5000/hub/x/y", False)]  # a wildcard prefix: the host name is what is rewritten
    assert registriesconf.policy("a.corp.example:444", "x").endpoints("a.corp.example:444/x", False) == [
        ("proxy.corp.example:5000/hub:444/x", False)]  # and its port stays, as in containers/image
    plain = registriesconf.policy("plain.example", "app")
    assert plain.endpoints("plain.example/app", False) == [("plain.example/app", False)]
    assert plain.endpoints("plain.example/app", True) == [("m4.example/app", False), ("plain.example/app", False)]
    assert registriesconf.policy("other.example", "app").endpoints("other.example/app", True) == [
        ("other.example/app", False)]
    conf.write_text('[[registry]]\nlocation = "x.example"\n[[registry.mirror]]\npull-from-mirror = "sometimes"\n')
    with pytest.raises(NsbuildError, match=r"needs a location, and pull-from-mirror is all"):
        registriesconf.policy("x.example", "y")
    conf.write_text('[[registry]]\nprefix = "a.example/app"\nlocation = "b.example"\n')  # leaves no repository
    with pytest.raises(NsbuildError, match=r"'a.example/app' sends docker://a.example/app:latest to 'b.example', "
                                           r"which is not HOST/REPO"):
        pull._clients(reg.parse("docker://a.example/app"), "layer[0]")


def test_registries_conf_policies(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CONTAINERS_REGISTRIES_CONF", raising=False)
    monkeypatch.setattr(registriesconf, "SYSTEM", str(tmp_path / "etc.conf"))
    (tmp_path / "etc.conf").write_text('[[registry]]\nlocation = "sys.example"\ninsecure = true\n')
    assert registriesconf.policy("sys.example", "a").insecure  # the system's file, while the user has none
    user = tmp_path / ".config" / "containers"
    user.mkdir(parents=True)
    (user / "registries.conf").write_text(
        '[[registry]]\nlocation = "r.example:5000"\ninsecure = true\n'
        '[[registry]]\nprefix = "r.example:5000/team/secret"\nlocation = "r.example:5000"\nblocked = true\n'
        '[[registry]]\nprefix = "*.corp.example"\ninsecure = true\n'
        '[registries.block]\nregistries = ["old.example"]\n')
    assert not registriesconf.policy("sys.example", "a").insecure  # the user's file replaces the system's
    assert registriesconf.policy("r.example:5000", "x").insecure
    assert not registriesconf.policy("r.example:5000", "x").blocked
    secret = registriesconf.policy("r.example:5000", "team/secret/app")  # the longest prefix wins
    assert secret.blocked and not secret.insecure and secret.source == str(user / "registries.conf")
    assert not registriesconf.policy("r.example:5000", "team/secretive").blocked  # at a path boundary only
    assert registriesconf.policy("a.b.corp.example", "x").insecure and not registriesconf.policy("corp.example", "x").insecure
    assert registriesconf.policy("old.example", "x").blocked
    assert registriesconf.policy("r.example:50001", "x") == registriesconf.Policy()
    (user / "registries.conf.d").mkdir()
    (user / "registries.conf.d" / "50-x.conf").write_text('[[registry]]\nlocation = "sys.example"\nblocked = true\n')
    assert registriesconf.policy("sys.example", "a").blocked  # a drop-in adds to it
    with pytest.raises(NsbuildError, match="cannot be read as registries.conf"):
        (user / "registries.conf").write_text("insecure = [")
        registriesconf.policy("x.example", "y")


def test_references_parse_like_skopeo() -> None:
    r = reg.parse("docker://127.0.0.1:5000/library/debian")
    assert (r.host, r.repo, r.tag, r.digest, r.loopback) == ("127.0.0.1:5000", "library/debian", "latest", None, True)
    d = "sha256:" + "a" * 64
    r = reg.parse(f"docker://registry.example.org/debian:bookworm@{d}")
    assert (r.tag, r.digest, r.loopback) == ("bookworm", d, False)
    assert str(r) == f"docker://registry.example.org/debian:bookworm@{d}"
    assert reg.parse("docker://localhost/x").loopback and reg.parse("docker://[::1]:5000/x").loopback
    # Docker Hub's names, as docker and skopeo read them
    hub = reg.Reference("docker.io", "library/debian", "bookworm", None)
    assert reg.parse("docker://docker.io/debian:bookworm") == hub
    assert reg.parse("docker://index.docker.io/library/debian:bookworm") == hub
    assert reg.parse("docker://docker.io/someone/app").repo == "someone/app"


def test_https_unless_loopback() -> None:
    assert reg.Client(reg.parse("docker://registry.example.org/x"), "layer[0]").base == "https://registry.example.org"
    assert reg.Client(reg.parse("docker://127.0.0.1:5000/x"), "layer[0]").base == "http://127.0.0.1:5000"
    assert reg.Client(reg.parse("docker://127.0.0.9:5000/x"), "layer[0]").base == "http://127.0.0.9:5000"
    assert reg.Client(reg.parse("docker://docker.io/debian"), "layer[0]").base == "https://registry-1.docker.io"


def test_credentials_come_from_auth_files_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert auth.credentials("r.example:5000") is None
    docker_config(tmp_path, "https://r.example:5000/v1/", "docker", "pw1")  # docker's URL-style key
    assert auth.credentials("r.example:5000") == ("docker", "pw1")
    (tmp_path / "xdg" / "containers").mkdir(parents=True)
    (tmp_path / "xdg" / "containers" / "auth.json").write_text(json.dumps(
        {"auths": {"r.example:5000": {"auth": base64.b64encode(b"podman:pw:2").decode()}}}))
    assert auth.credentials("r.example:5000") == ("podman", "pw:2")  # first file wins; ":" in passwords kept
    assert auth.credentials("other.example") is None
    docker_config(tmp_path, "https://index.docker.io/v1/", "hub", "pw3")  # docker login's key for Docker Hub
    assert auth.credentials("docker.io") == ("hub", "pw3")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def credential_helper(bin_dir: Path, name: str, answers: dict[str, str]) -> Path:
    """docker-credential-NAME on $PATH, as docker-credential-helpers' programs behave: `get` reads a
    server from stdin and prints {"Username", "Secret"}, or fails; every question goes to its log."""
    bin_dir.mkdir(exist_ok=True)
    log = bin_dir / f"{name}.log"
    program = bin_dir / f"docker-credential-{name}"
    program.write_text(f"#!{sys.executable}\nimport json, sys\nserver = sys.stdin.read()\n"
                       f"open({str(log)!r}, 'a').write(sys.argv[1] + ' ' + server + '\\n')\n"
                       f"answers = {answers!r}\n"
                       "if server not in answers: sys.exit('credentials not found in native keychain')\n"
                       "user, _, secret = answers[server].partition(':')\n"
                       "print(json.dumps({'ServerURL': server, 'Username': user, 'Secret': secret}))\n")
    program.chmod(0o755)
    return log


def test_credentials_files_namespaces_and_helpers(tmp_path: Path, monkeypatch) -> None:
    for var in ("XDG_RUNTIME_DIR", "REGISTRY_AUTH_FILE", "XDG_CONFIG_HOME", "DOCKER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    log = credential_helper(tmp_path / "bin", "vault", {"secure.example": "robot:s3cret", "shared.example": "h:1"})
    config = tmp_path / ".config" / "containers" / "auth.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({
        "auths": {"quay.example": {"auth": b64("any:1")}, "quay.example/team": {"auth": b64("team:2")},
                  "quay.example/team/app": {"auth": b64("app:3")}, "secure.example": {"auth": b64("stale:0")}},
        "credHelpers": {"secure.example": "vault", "missing.example": "vault"}}))
    assert auth.credentials("quay.example", "team/app") == ("app", "3")  # the longest key that matches
    assert auth.credentials("quay.example", "team/other") == ("team", "2")
    assert auth.credentials("quay.example", "teammate/x") == ("any", "1")  # at a path boundary only
    assert auth.credentials("secure.example", "x") == ("robot", "s3cret")  # the helper, not the stale login
    assert auth.credentials("missing.example", "x") is None  # the helper has none: no login either
    assert log.read_text().splitlines() == ["get secure.example", "get missing.example"]
    # docker's file, moved by $DOCKER_CONFIG, with a default helper; the containers file came first
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dockercfg"))
    docker_config(tmp_path / "dockercfg", "other.example", "d", "4")
    (tmp_path / "dockercfg" / ".docker" / "config.json").rename(tmp_path / "dockercfg" / "config.json")
    cfg = json.loads((tmp_path / "dockercfg" / "config.json").read_text())
    (tmp_path / "dockercfg" / "config.json").write_text(json.dumps({**cfg, "credsStore": "vault"}))
    assert auth.credentials("other.example", "x") == ("d", "4")
    assert auth.credentials("shared.example", "x") == ("h", "1")  # credsStore, for what has no login
    # $REGISTRY_AUTH_FILE replaces $XDG_RUNTIME_DIR's file (podman's --authfile)
    (tmp_path / "xdg" / "containers").mkdir(parents=True)
    (tmp_path / "xdg" / "containers" / "auth.json").write_text(json.dumps({"auths": {"quay.example": {"auth": b64("x:9")}}}))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert auth.credentials("quay.example", "team/app") == ("x", "9")
    (tmp_path / "override.json").write_text(json.dumps({"auths": {"other.example": {"auth": b64("o:5")}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "override.json"))
    assert auth.credentials("other.example", "x") == ("o", "5")
    assert auth.credentials("quay.example", "team/app") == ("app", "3")  # the runtime file is not read now


def test_credentials_of_docker_hub_and_bad_logins(tmp_path: Path, monkeypatch) -> None:
    for var in ("XDG_RUNTIME_DIR", "REGISTRY_AUTH_FILE", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert auth.auth_files()[0] == f"/run/containers/{os.getuid()}/auth.json"  # containers/image's, without XDG
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    log = credential_helper(tmp_path / "bin", "desktop", {"https://index.docker.io/v1/": "hub:pw"})
    (tmp_path / "docker").mkdir()
    config = tmp_path / "docker" / "config.json"
    config.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {}}, "credsStore": "desktop"}))
    # docker login with a credsStore keeps Docker Hub under its v1 URL: asked so, by the pull's name
    # for it and by the warm check's (the API host)
    assert auth.credentials("docker.io", "library/debian") == ("hub", "pw")
    assert auth.credentials("registry-1.docker.io", "library/debian") == ("hub", "pw")
    config.write_text(json.dumps({"credHelpers": {"https://index.docker.io/v1/": "desktop"}}))  # a URL key
    assert auth.credentials("docker.io", "library/debian") == ("hub", "pw")
    assert log.read_text().splitlines() == ["get https://index.docker.io/v1/"] * 3
    # logins that are none: empty, not base64, no colon, no password; the next file's is taken
    runtime = tmp_path / "xdg" / "containers"
    runtime.mkdir(parents=True)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    config.write_text(json.dumps({"auths": {"quay.example": {"auth": b64("real:login")}}}))
    for bad in ("", "!!!", b64("nocolon"), b64("user:")):
        (runtime / "auth.json").write_text(json.dumps({"auths": {"quay.example": {"auth": bad}}}))
        assert auth.credentials("quay.example", "x") == ("real", "login"), bad


def test_misbehaving_credential_helpers_cost_bounded_time_and_memory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(auth, "HELPER_TIMEOUT", 2)
    marker = f"nsbuild-helper-{os.getpid()}"
    answer = json.dumps({"Username": "u", "Secret": "s"})
    helpers = {
        "flood": "head -c 50000000 /dev/zero",           # more than a login
        "stuck": "sleep 60",                             # never answers
        "lingers": f"echo '{answer}'; exec -a {marker} sleep 60 &",  # answers, leaves a child on stdout
        "fails": f"echo '{answer}'; exit 1",             # not found
        "fine": f"cat > /dev/null; echo '{answer}'",
    }
    for name, script in helpers.items():
        (tmp_path / f"docker-credential-{name}").write_text(f"#!/bin/bash\n{script}\n")
        (tmp_path / f"docker-credential-{name}").chmod(0o755)
        (tmp_path / "config.json").write_text(json.dumps({"credsStore": name}))
        assert auth.credentials("r.example", "x") == (("u", "s") if name == "fine" else None), name
    left = [p for p in os.listdir("/proc") if p.isdigit() and marker.encode() in _cmdline(p)]
    assert left == []  # the lingering child was killed with the helper's session


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_the_warm_check_accepts_what_the_pull_accepts() -> None:
    from builder.images import tagcheck

    assert tagcheck.ACCEPT == reg.ACCEPT  # spelled out there, so that a warm build imports no OCI machinery


def test_the_warm_check_takes_no_token_that_could_inject_a_curl_option() -> None:
    from builder.images import tagcheck

    def token_service(body: bytes):  # a token service's answer, for any request
        return lambda method, url, verify, authorization: tagcheck._Answer(200, body=body)

    challenge = 'Bearer realm="http://127.0.0.1:1/token",service="s"'
    url = "http://127.0.0.1:1/v2/a/b/manifests/v1"
    assert tagcheck._authorization(token_service(b'{"token": "abc.def"}'), url, challenge, True) == "Bearer abc.def"
    evil = json.dumps({"token": 'x"\noutput = "/etc/passwd'}).encode()  # a newline ends curl's config line
    assert tagcheck._authorization(token_service(evil), url, challenge, True) is None
    assert tagcheck._authorization(token_service(b'{"token": "x"}'), url, 'Bearer realm="file:///etc"', True) is None


class _Hostile(http.server.BaseHTTPRequestHandler):
    """A registry whose 401 names a token realm with curl glob patterns and, for big=1, a 90 kB header."""
    tokens: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        if self.headers.get("Authorization") == 'Bearer a\\b"c':  # the token, \\ and " intact
            self.send_response(200)
            self.send_header("Docker-Content-Digest", "sha256:" + "a" * 64)
        else:
            self.send_response(401)
            port = self.server.server_address[1]
            padding = "x" * 90_000 if "big" in self.path else ""
            self.send_header("WWW-Authenticate", f'Bearer realm="http://127.0.0.1:{port}/t{{1,2}}[1-3]",'
                                                 f'service="s"{padding}')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.tokens.append(self.path)
        body = json.dumps({"token": 'a\\b"c'}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("asker", ["curl", "http.client"])
def test_the_warm_check_makes_the_requests_it_means_against_a_hostile_registry(asker: str, monkeypatch) -> None:
    from builder.images import tagcheck

    if asker == "http.client":
        monkeypatch.setenv("PATH", "/nonexistent")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    signal.signal(signal.SIGALRM, lambda *a: pytest.fail("the warm check hangs"))
    signal.alarm(60)
    try:
        for repo in ("small", "big"):  # big: more WWW-Authenticate than a pipe holds
            _Hostile.tokens.clear()
            url = f"http://127.0.0.1:{server.server_address[1]}/v2/{repo}/manifests/v1"
            if repo == "big" and asker == "http.client":  # its limit is 64 kB a header: no answer, plan anew
                assert tagcheck.digest(url) is None and _Hostile.tokens == []
                continue
            assert tagcheck.digest(url) == "sha256:" + "a" * 64
            assert _Hostile.tokens == [f"/t{{1,2}}[1-3]?scope=repository%3A{repo}%3Apull&service=s"]  # one, no glob
    finally:
        signal.alarm(0)
        server.shutdown()
        server.server_close()


def test_bad_documents_and_files_are_no_tracebacks(tmp_path: Path, monkeypatch) -> None:
    assert auth.token_of(b"[" * 100_000) is None  # deeper than the JSON parser goes
    assert reg._error_detail(b'{"errors": 5}') == "" and reg._error_detail(b"[" * 100_000) == ""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "config.json").write_text(json.dumps({"auths": {"r.example": {"auth": 5}}}))
    assert auth.credentials("r.example") is None
    conf = tmp_path / "registries.conf"
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))
    for bad in ('mirror = 5', 'mirror-by-digest-only = true\n[[registry.mirror]]\nlocation = "m"\npull-from-mirror = "all"'):
        conf.write_text(f'[[registry]]\nlocation = "x.example"\n{bad}\n')
        with pytest.raises(NsbuildError, match="each \\[\\[registry.mirror\\]\\] needs a location"):
            registriesconf.policy("x.example", "y")


def test_challenges_parse() -> None:
    assert auth.challenge('Bearer realm="https://auth.example/token",service="registry",scope="repository:a:pull"') \
        == ("bearer", {"realm": "https://auth.example/token", "service": "registry", "scope": "repository:a:pull"})
    assert auth.challenge('Basic realm="x"') == ("basic", {"realm": "x"})
    assert auth.challenge('Bearer realm=https://a.example/t, service="x,y"') == (
        "bearer", {"realm": "https://a.example/t", "service": "x,y"})  # unquoted values, and commas in quotes
    # a hostile registry's header: a quadratic scan of it (the old pattern) would not end for hours
    signal.signal(signal.SIGALRM, lambda *a: pytest.fail("challenge() hangs on a long header"))
    signal.alarm(30)
    try:
        assert auth.challenge('Bearer realm="r",service="s"' + "x" * (1 << 20))[1]["realm"] == "r"
    finally:
        signal.alarm(0)
    with pytest.raises(NsbuildError, match="unsupported authentication challenge"):
        reg.Client(reg.parse("docker://127.0.0.1:1/x"), "layer[0]")._authenticate("Negotiate")


def test_a_pulled_image_config_gives_run_defaults(nsbuild, registry, tmp_path: Path) -> None:
    r = recipe(tmp_path, registry.ref("demo:gzip"))
    r.write_text(r.read_text().split("[run]")[0])  # no [run]: the demo image's Cmd ["/bin/sh"] is the command
    run = json.loads(nsbuild("plan", str(r), "--json").stdout)["run"]
    assert run["command"] == {"value": ["/bin/sh"], "from": "image config of layer[0]"}
    assert run["cwd"] == {"value": "/", "from": "default"}


@pytest.mark.parametrize("quiet", [False, True])
def test_blobs_show_progress_on_a_terminal_unless_quiet(nsbuild, registry, tmp_path: Path, quiet: bool) -> None:
    import pty

    from conftest import nsbuild_cmd

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(nsbuild_cmd() + ["build", str(recipe(tmp_path, registry.ref("demo:gzip")))]
                                + (["--quiet"] if quiet else []), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=slave, env=dict(nsbuild.env, TERM="xterm"), cwd=tmp_path)
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(60) == 0, seen
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert (b"pulling" in seen) is not quiet, seen
    nsbuild("rm", "oci")


def test_gc_empties_the_document_cache_and_a_pull_fetches_it_again(nsbuild, fault_proxy, tmp_path: Path) -> None:
    proxy = fault_proxy("pass")
    r = recipe(tmp_path, proxy.ref("demo:gzip"))
    nsbuild("build", str(r))
    nsbuild("rm", "oci")
    removed = json.loads(nsbuild("gc", "--json").stdout)["removed"]
    blobs = tmp_path / "store" / "blobs"
    assert sum("/blobs/" in p for p in removed) == 2 and os.listdir(blobs) == []
    assert store_entries(tmp_path) == []  # no sandbox and no lock file keeps the layers
    n = len(proxy.requests())
    nsbuild("build", str(r))
    assert sum("/blobs/" in line for line in proxy.requests()[n:]) == 3  # config and both layers again
    nsbuild("rm", "oci")
