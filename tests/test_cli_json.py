"""--json everywhere: each command that has it prints its output and its errors as JSON, with the
exit status of the plain form."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import IS_ROOT, RECIPES, needs_root

BAD = '[sandbox]\nname = "Bad"\n[root]\nsize = "lots"\n'

# (command line with {bad} for a bad recipe, exit status, the error's key or None, a fragment of the error)
ERRORS = [
    (["build", "--json", "{bad}"], 2, "sandbox.name", "'Bad' is not a valid name"),
    (["build", "{bad}", "--json", "--locked"], 2, "sandbox.name", "'Bad' is not a valid name"),
    (["build", "--json", "{missing}"], 2, None, "cannot read the recipe"),
    (["build", "--json", "--count", "0"], 2, None, "--count 0 is out of range"),
    (["build", "--json", "--strategy"], 2, None, "requires an argument"),
    (["plan", "--json", "{bad}"], 2, "sandbox.name", "'Bad' is not a valid name"),
    (["plan", "-f", "json", "{bad}"], 2, "sandbox.name", "'Bad' is not a valid name"),
    (["check", "--json", "{bad}"], 2, "sandbox.name", "'Bad' is not a valid name"),
    (["lock", "--json", "{bad}"], 2, "sandbox.name", "'Bad' is not a valid name"),
    (["ls", "--json", "--bogus"], 2, None, "No such option: --bogus"),
    (["gc", "--json", "--bogus"], 2, None, "No such option: --bogus"),
    (["doctor", "--json", "--bogus"], 2, None, "No such option: --bogus"),
    (["rm", "--json", "Bad"], 2, None, "'Bad' is not a sandbox name"),
    (["rm", "--json"], 2, None, "give sandbox names or --all"),
    (["rm", "--json", "--all", "x"], 2, None, "--all takes no sandbox names"),
]


@pytest.mark.parametrize("args,status,key,fragment", ERRORS, ids=[" ".join(e[0]) for e in ERRORS])
def test_errors_are_json(nsbuild, tmp_path: Path, args: list[str], status: int, key: str | None,
                         fragment: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    args = [a.format(bad=bad, missing=tmp_path / "missing.toml") for a in args]
    proc = nsbuild(*args, check=False)
    assert proc.returncode == status, proc
    error = json.loads(proc.stderr)  # one JSON document on stderr, and no result on stdout
    assert proc.stdout == ""
    assert fragment in error["error"] and error["key"] == key and error["exit_code"] == status, error
    assert isinstance(error["hint"], str)
    if key:
        assert error["file"] == str(bad) and [p["key"] for p in error["problems"]] == ["sandbox.name", "root.size"]
        plain = nsbuild(*[a for a in args if a not in ("--json", "-f", "json")], check=False)
        assert plain.returncode == status and plain.stdout == "" and plain.stderr.startswith("nsbuild: error: ")


def test_check_and_lock_speak_json(nsbuild, tmp_path: Path) -> None:
    shutil.copytree(RECIPES / "layers", tmp_path / "layers")
    recipe = tmp_path / "layers.toml"
    shutil.copy(RECIPES / "layers.toml", recipe)
    assert json.loads(nsbuild("check", "--json", str(recipe)).stdout) == {
        "file": str(recipe), "ok": True, "command": ["/usr/local/bin/hello"]}
    assert json.loads(nsbuild("lock", "--json", str(recipe)).stdout) == {"lock": f"{recipe}.lock"}
    assert json.loads((tmp_path / "layers.toml.lock").read_text())["recipe"] == "layers.toml"


@needs_root
def test_rm_speaks_json(nsbuild, state_dir: Path) -> None:
    nsbuild("build", str(RECIPES / "layers.toml"))
    nsbuild("build", str(RECIPES / "layers.toml"), "--name", "other")
    assert json.loads(nsbuild("rm", "--json", "layers", "nope").stdout) == {"removed": ["layers"],
                                                                            "not_found": ["nope"]}
    assert json.loads(nsbuild("rm", "--all", "--json").stdout) == {"removed": ["other"], "released": str(state_dir),
                                                                   "kept_directory": False}
    assert json.loads(nsbuild("rm", "--all", "--json").stdout) == {"removed": [], "released": None,
                                                                   "kept_directory": False}


@pytest.mark.skipif(not IS_ROOT, reason="needs a test user")
@pytest.mark.parametrize("args,status,fragment", [  # rootless commands work; root's state dir stops them
    (["ls", "--json"], 1, "cannot use the state directory"),
    (["build", "--json", "mini.toml"], 1, "cannot use the state directory"),
    (["rm", "--json", "layers"], 1, "cannot use the state directory"),
    (["gc", "--json"], 1, "cannot use the state directory"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_a_users_errors_are_json(user, tmp_path: Path, args: list[str], status: int, fragment: str) -> None:
    work = Path(user.home) / f"json-{tmp_path.name}"
    (work / "state").mkdir(parents=True, mode=0o700)  # root's, as after a build
    (work / "mini.toml").write_text('[sandbox]\nname = "mini"\n')
    subprocess.run(["chmod", "a+rx", str(work), str(work / "mini.toml")], check=True)
    try:
        proc = user.run(*args, cwd=str(work), env={"NSBUILD_STATE_DIR": str(work / "state"),
                                                   "NSBUILD_STORE": str(work / "state")})
        assert proc.returncode == status and "Traceback" not in proc.stderr, proc
        assert fragment in json.loads(proc.stderr)["error"] and proc.stdout == ""
    finally:
        shutil.rmtree(work)
