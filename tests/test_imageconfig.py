"""An image's config as [run] defaults: the recipe wins per value, the image beats the built-in default,
and `plan` / `check` say where each value came from."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import needs_root
from test_oci import dir_, file_, finish, image, tagged, tar_bytes

from builder.images.imageconfig import describe, run_defaults
from builder.recipe.model import DEFAULT_PATH, Run
from builder.recipe.load import parse

CONFIG = {"Env": ["PATH=/usr/bin:/bin", "GREETING=hello from the image", "EMPTY="],
          "Entrypoint": ["/bin/sh", "-c"], "Cmd": ['echo "$GREETING in $(pwd) as $(id -u)"'],
          "WorkingDir": "/data", "User": "1000:1000"}
SRC = "image config of layer[0]"


def run_of(run_table: dict) -> Run:
    doc = {"sandbox": {"name": "x"}, **({"run": run_table} if run_table else {})}
    return parse(doc, "/tmp/r.toml", "0" * 64, "/tmp").run


def test_unset_values_come_from_the_image() -> None:
    run = run_defaults(run_of({}), {"config": CONFIG}, SRC)
    assert run.command == ("/bin/sh", "-c", CONFIG["Cmd"][0]) and run.cwd == "/data" and run.user == "1000:1000"
    assert dict(run.env) == {"PATH": "/usr/bin:/bin", "HOME": "/root", "GREETING": "hello from the image", "EMPTY": ""}
    where = {key: origin for key, _, origin in describe(run)}
    assert where == {"command": SRC, "cwd": SRC, "user": SRC, "env.PATH": SRC, "env.GREETING": SRC, "env.EMPTY": SRC,
                     "env.HOME": "default"}


def test_the_recipe_wins_value_by_value() -> None:
    run = run_defaults(run_of({"command": ["/bin/true"], "env": {"GREETING": "mine"}}), {"config": CONFIG}, SRC)
    assert run.command == ("/bin/true",) and dict(run.env)["GREETING"] == "mine"
    assert run.cwd == "/data" and dict(run.env)["PATH"] == "/usr/bin:/bin"  # not given: the image's
    where = {key: origin for key, _, origin in describe(run)}
    assert where["command"] == "recipe" and where["env.GREETING"] == "recipe" and where["cwd"] == SRC
    run = run_defaults(run_of({"cwd": "/srv"}), {"config": CONFIG}, SRC)
    assert run.cwd == "/srv"


@pytest.mark.parametrize("user,want", [("", "root"), ("0", "root"), ("root", "root"), ("app", "app"),
                                       ("1000", "1000"), ("1000:50", "1000:50"), ("app:staff", "app"),
                                       ("bad user", "root")])
def test_user_maps_to_run_user(user: str, want: str) -> None:
    assert run_defaults(run_of({}), {"config": {"User": user}}, SRC).user == want


def test_an_image_without_config_changes_nothing() -> None:
    base = run_of({})
    assert run_defaults(base, {}, SRC) == base and run_defaults(base, {"config": {}}, SRC) == base
    assert base.command == ("/bin/sh",) and dict(base.env)["PATH"] == DEFAULT_PATH
    # a relative WorkingDir is not a path in the sandbox: left out
    assert run_defaults(base, {"config": {"WorkingDir": "data"}}, SRC).cwd == "/"


def layout(path: Path) -> Path:
    l1 = tar_bytes(dir_("data"), file_("data/x"), dir_("etc"), file_("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"))
    return finish(path, image(path, l1, run_config=CONFIG, **tagged("v1")))


RECIPE = ('[sandbox]\nname = "cfg"\n[[layer]]\noci = "layout"\nref = "v1"\n{above}'
          '[[mount]]\ntarget = "/usr"\ntype = "bind"\nsource = "/usr"\n'
          '[[path]]\npath = "/bin"\nsymlink = "usr/bin"\n[[path]]\npath = "/lib64"\nsymlink = "usr/lib64"\n'
          '[[path]]\npath = "/lib"\nsymlink = "usr/lib"\n{run}')


@needs_root
def test_plan_check_and_run_use_the_image_config(nsbuild, tmp_path: Path) -> None:
    layout(tmp_path / "layout")
    r = tmp_path / "r.toml"
    r.write_text(RECIPE.format(above="", run='[run]\nenv = { HOME = "/data" }\n'))
    plan = json.loads(nsbuild("plan", str(r), "--json").stdout)["run"]
    assert plan["command"] == {"value": ["/bin/sh", "-c", CONFIG["Cmd"][0]], "from": SRC}
    assert plan["cwd"] == {"value": "/data", "from": SRC} and plan["user"]["from"] == SRC
    assert plan["env.HOME"] == {"value": "/data", "from": "recipe"}
    assert plan["env.GREETING"] == {"value": "hello from the image", "from": SRC}
    table = nsbuild("plan", str(r)).stdout
    assert f'run.cwd = "/data"  ({SRC})' in table and 'run.env.HOME = "/data"  (recipe)' in table
    check = nsbuild("check", str(r)).stdout
    assert "ok: /bin/sh starts" in check and f"run.command = " in check and f"({SRC})" in check
    nsbuild("build", str(r))
    # the command, directory and environment are the image's (the user is recorded; running as it is [run]'s job)
    assert nsbuild("run", "cfg").stdout.startswith("hello from the image in /data as ")
    meta = json.loads((Path(nsbuild.env["NSBUILD_STATE_DIR"]) / "cfg.json").read_text())
    assert meta["run"]["user"] == "1000:1000" and meta["run"]["cwd"] == "/data"
    nsbuild("rm", "cfg")


@needs_root
def test_a_layer_above_the_image_means_no_image_defaults(nsbuild, tmp_path: Path) -> None:
    layout(tmp_path / "layout")
    (tmp_path / "top").mkdir()
    r = tmp_path / "r.toml"
    r.write_text(RECIPE.format(above='[[layer]]\npath = "top"\n', run=""))
    doc = json.loads(nsbuild("plan", str(r), "--json").stdout)
    assert "run" not in doc
    nsbuild("build", str(r))
    assert nsbuild("run", "cfg", "--", "pwd").stdout == "/\n"
    nsbuild("rm", "cfg")
