"""Recipe validation: every rule reports file, key path, what is wrong and a hint. No root needed."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from builder.errors import RecipeError
from builder.recipe.load import load

from conftest import RECIPES

HEAD = '[sandbox]\nname = "t"\n'


def write(tmp_path: Path, body: str, head: str = HEAD) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(head + textwrap.dedent(body))
    return path


def problems(tmp_path: Path, body: str, head: str = HEAD) -> list[str]:
    path = write(tmp_path, body, head)
    with pytest.raises(RecipeError) as info:
        load(str(path), cwd=str(tmp_path))
    assert info.value.exit_code == 2
    for p in info.value.problems:
        assert p.render(str(path)).startswith(str(path) + ": ")
    return [f"{p.key}: {p.message} ({p.hint})" for p in info.value.problems]


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(recipe: Path, tmp_path: Path) -> None:
    image = RECIPES / "debian" / "bookworm-minbase.erofs"  # made by recipes/debian/make-image.sh, not shipped
    if recipe.name == "debian.toml" and not image.exists():
        with pytest.raises(RecipeError) as info:
            load(str(recipe), cwd=str(tmp_path))
        assert [p.key for p in info.value.problems] == ["layer[0].image"]  # the only problem: the image to make
        return
    r = load(str(recipe), cwd=str(tmp_path))
    assert r.name and r.mounts


def test_minimal_recipe_defaults(tmp_path: Path) -> None:
    r = load(str(write(tmp_path, "")), cwd=str(tmp_path))
    assert r.root.upper == "tmpfs" and r.root.attrs == ("nosuid", "nodev")
    assert r.layers == () and r.mounts == () and r.paths == ()
    assert r.run.command == ("/bin/sh",) and r.run.cwd == "/"
    assert dict(r.run.env)["PATH"].startswith("/usr/local/sbin")


CASES = [
    # (body, key, fragment of the message or hint)
    ("[[mount]]\ntarget = '/tmp'\ntype = 'tmpfs'\nattrs = ['nosiud']\n", "mount[0].attrs[0]", "did you mean 'nosuid'?"),
    ("[[mount]]\ntarget = 'tmp'\ntype = 'tmpfs'\n", "mount[0].target", "absolute"),
    ("[[mount]]\ntarget = '/a/../b'\ntype = 'tmpfs'\n", "mount[0].target", "'..'"),
    ("[[mount]]\ntarget = '/a//b'\ntype = 'tmpfs'\n", "mount[0].target", "normalized"),
    ("[[mount]]\ntarget = '/a/'\ntype = 'tmpfs'\n", "mount[0].target", "normalized"),
    ("[[mount]]\ntarget = '/'\ntype = 'tmpfs'\n", "mount[0].target", "[root]"),
    ("[[mount]]\ntarget = '/t'\ntype = 'tmpfs'\n[[mount]]\ntarget = '/t'\ntype = 'proc'\n", "mount[1].target",
     "already mounted by mount[0]"),
    ("[[mount]]\ntarget = '/dev'\ntype = 'dev'\n[[mount]]\ntarget = '/dev/shm'\ntype = 'tmpfs'\n",
     "mount[1].target", "already mounted by mount[0]"),
    ("[[mount]]\ntarget = '/t'\ntype = 'tmpfs'\nattrs = ['noatime', 'strictatime']\n", "mount[0].attrs",
     "conflicting atime"),
    ("[[mount]]\ntarget = '/t'\ntype = 'bind'\nsource = 'missing'\n", "mount[0].source", "does not exist"),
    ("[[mount]]\ntarget = '/t'\ntype = 'bind'\n", "mount[0].source", "is required"),
    ("[[mount]]\ntarget = '/t'\ntype = 'tmpf'\n", "mount[0].type", "did you mean 'tmpfs'?"),
    ("[[mount]]\ntarget = '/t'\ntype = 'Bad Type'\n", "mount[0].type", "not a filesystem type"),
    ("[[mount]]\ntarget = '/t'\ntype = 'tmpfs'\npropagation = 'shard'\n", "mount[0].propagation",
     "did you mean 'shared'?"),
    ("[run]\nuser = 'a b'\n", "run.user", "not root, a user NAME or UID[:GID]"),
    ("[run]\nuser = '1000:x'\n", "run.user", "not root, a user NAME or UID[:GID]"),
    ("[run]\nhostname = 'no_underscores'\n", "run.hostname", "not a valid host name"),
    ("[run]\nhostname = '" + "a" * 65 + "'\n", "run.hostname", "not a valid host name"),
    ("[run]\nnetwork = 'bridge'\n", "run.network", "unknown network 'bridge'"),
    ("[run]\ncapabilities = ['CAP_FLY']\n", "run.capabilities[0]", "not a capability"),
    ("[run]\ncontained = 'yes'\n", "run.contained", "must be"),
    ("[[mount]]\ntarget = '/t'\ntype = 'tmpfs'\npropagation = 'slave'\n", "mount[0].propagation",
     "'slave' needs a master"),
    ("[[mount]]\ntarget = '/t'\ntype = 'bind'\nsource = '.'\npropagation = 'shared'\n[[mount]]\n"
     "target = '/t/x'\ntype = 'tmpfs'\n", "mount[1].target", "would appear on the host too"),
    ("[[mount]]\ntarget = '/t'\ntype = 'tmpfs'\nrw = true\n", "mount[0].rw", "only applies"),
    ("[[mount]]\ntarget = '/t'\ntype = 'proc'\nsource = 'x'\n", "mount[0].source", "takes no source"),
    ("[[mount]]\ntarget = '/t'\n", "mount[0].type", "is required"),
    ("[[mount]]\ntype = 'proc'\n", "mount[0].target", "is required"),
    ("[[mount]]\ntarget = 3\ntype = 'proc'\n", "mount[0].target", "must be a string"),
    ("[[mount]]\ntarget = '/t'\ntype = 'tmpfs'\noptions = 'size=1m'\n", "mount[0].options", "must be a table"),
    ("[[layer]]\npath = 'nope'\n", "layer[0].path", "does not exist"),
    ("[[layer]]\n", "layer[0]", "exactly one source key"),
    ("[[layer]]\nimage = 'x.erofs'\n", "layer[0].image", "is not a file"),
    ("[[layer]]\nimage = 'r.toml'\n", "layer[0].image", "is not an erofs, squashfs or ext4 image"),
    ("[[layer]]\nimage = 'r.toml'\ntype = 'vfat'\n", "layer[0].type", "unknown image type"),
    ("[[layer]]\noci = '.'\n", "layer[0].oci", "not an OCI image layout"),
    ("[[layer]]\nbinaries = []\n", "layer[0].binaries", "is empty"),
    ("[[layer]]\nbinaries = ['/no/such/prog']\n", "layer[0].binaries[0]", "is not a file on this host"),
    ("[[layer]]\nbinaries = [1]\n", "layer[0].binaries[0]", "non-empty string"),
    ("[[layer]]\npath = '.'\nref = 'latest'\n", "layer[0].ref", "does not apply to path layers"),
    ("[[layer]]\narchive = 'r.toml'\ntype = 'erofs'\n", "layer[0].type", "applies to image layers"),
    ("[[layer]]\narchive = 'missing.tar'\n", "layer[0].archive", "is not a file"),
    ("[[layer]]\narchive = 'r.toml'\nsha256 = 'abc'\n", "layer[0].sha256", "64 lower-case hex"),
    ("[[layer]]\npath = '.'\ndevices = true\n", "layer[0].devices", "applies to archive, oci layers"),
    ("[root]\nupper = 'none'\n", "root.upper", "at least one layer"),
    ("[root]\nsize = 'lots'\n", "root.size", "not a tmpfs size"),
    ("[root]\nupper = 'no/such/parent/up'\n", "root.upper", "does not exist"),
    ("[[path]]\npath = '/etc/x'\nmode = '999'\n", "path[0].mode", "octal"),
    ("[[path]]\npath = '/etc/x'\ntype = 'fifo'\n", "path[0].type", "dir, file or symlink"),
    ("[[path]]\npath = '/l'\ntype = 'symlink'\n", "path[0].symlink", "must name"),
    ("[[path]]\npath = '/d'\ncontent = 'x'\ntype = 'dir'\n", "path[0].content", "only applies to files"),
    ("[[path]]\npath = '/tmp/x'\ncontent = 'x'\n[[mount]]\ntarget = '/tmp'\ntype = 'tmpfs'\n", "path[0].path",
     "hidden by mount[0]"),
    ("[[path]]\npath = '/x'\n[[path]]\npath = '/x'\n", "path[1].path", "already created"),
    ("[run]\ncommand = []\n", "run.command", "non-empty"),
    ("[run]\ncwd = 'work'\n", "run.cwd", "absolute"),
    ("[run]\nenv = { A = 1 }\n", "run.env.A", "must be a string"),
    ("[run]\nshell = 'x'\n", "run.shell", "unknown key"),
    ("[bogus]\n", "bogus", "unknown key"),
]


@pytest.mark.parametrize("body,key,fragment", CASES, ids=[c[1] + ":" + c[2][:20] for c in CASES])
def test_rule(tmp_path: Path, body: str, key: str, fragment: str) -> None:
    found = problems(tmp_path, body)
    assert any(p.startswith(key + ":") and fragment in p for p in found), found


@pytest.mark.parametrize("name", ["", "UPPER", "a/b", "../x", "-x", "x" * 64, "a b"])
def test_bad_names(tmp_path: Path, name: str) -> None:
    found = problems(tmp_path, "", head=f'[sandbox]\nname = "{name}"\n')
    assert any(p.startswith("sandbox.name:") for p in found), found


def test_unknown_key_gets_a_suggestion(tmp_path: Path) -> None:
    found = problems(tmp_path, "", head="[sandbox]\nname = 't'\nnmae = 'x'\n")
    assert found == ["sandbox.nmae: unknown key (did you mean 'name'?)"]


def test_mount_must_be_an_array_of_tables(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD, head="mount = 'x'\n")
    assert any(p.startswith("mount: must be an array of tables") for p in found), found


def test_missing_sandbox_table(tmp_path: Path) -> None:
    assert any(p.startswith("sandbox:") for p in problems(tmp_path, "", head=""))


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, "[[mount]]\ntarget = 'x'\ntype = 'tmpf'\n[run]\ncwd = 'y'\n[root]\nsize = 'q'\n")
    assert len(found) >= 4, found


def test_toml_syntax_error(tmp_path: Path) -> None:
    found = problems(tmp_path, "[[mount]\n")
    assert "not valid TOML" in found[0]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as info:
        load(str(tmp_path / "absent.toml"))
    assert "cannot read" in str(info.value)


def test_optional_bind_with_missing_source_is_skipped(tmp_path: Path) -> None:
    r = load(str(write(tmp_path, "[[mount]]\ntarget = '/t'\ntype = 'bind'\nsource = 'nope'\noptional = true\n")),
             cwd=str(tmp_path))
    assert r.mounts == ()


def test_safe_defaults_and_negations(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    r = load(str(write(tmp_path, """
        [[mount]]
        target = "/ro"
        type = "bind"
        source = "src"
        [[mount]]
        target = "/rw"
        type = "bind"
        source = "$CWD/src"
        rw = true
        attrs = ["suid"]
        [[mount]]
        target = "/proc"
        type = "proc"
        [[mount]]
        target = "/t"
        type = "tmpfs"
        attrs = ["exec", "noatime"]
    """)), cwd=str(tmp_path))
    by = {m.target: m for m in r.mounts}
    assert by["/ro"].attrs == ("ro", "nosuid", "nodev") and by["/ro"].source == str(tmp_path / "src")
    assert by["/rw"].attrs == ("nodev",) and by["/rw"].source_kind == "dir"
    assert by["/proc"].attrs == ("nosuid", "nodev", "noexec")
    assert by["/t"].attrs == ("nosuid", "nodev", "noatime")


def test_mounts_sorted_parents_first(tmp_path: Path) -> None:
    r = load(str(write(tmp_path, """
        [[mount]]
        target = "/a/b/c"
        type = "tmpfs"
        [[mount]]
        target = "/a"
        type = "tmpfs"
        [[mount]]
        target = "/a/b"
        type = "tmpfs"
    """)), cwd=str(tmp_path))
    assert [m.target for m in r.mounts] == ["/a", "/a/b", "/a/b/c"]
    assert [m.origin for m in r.mounts] == ["mount[1]", "mount[2]", "mount[0]"]


def test_a_directory_upper_goes_with_a_binaries_layer(tmp_path: Path) -> None:
    # a binaries layer has no host path ("" until the store makes one): it overlaps no upper
    (tmp_path / "data").mkdir()
    r = load(str(write(tmp_path, "[[layer]]\nbinaries = ['/bin/sh']\n[root]\nupper = 'data/upper'\n")),
             cwd=str(tmp_path))
    assert r.root.upper == str(tmp_path / "data/upper") and r.layers[0].kind == "binaries"


def test_a_directory_upper_inside_a_layer_still_overlaps(tmp_path: Path) -> None:
    (tmp_path / "layer").mkdir()
    found = problems(tmp_path, "[[layer]]\nbinaries = ['/bin/sh']\n[[layer]]\npath = 'layer'\n"
                               "[root]\nupper = 'layer/upper'\n")
    assert [p for p in found if p.startswith("root.upper:")] == [
        f"root.upper: '{tmp_path}/layer/upper' overlaps layer[1] ({tmp_path}/layer) "
        "(overlayfs needs the upper directory outside every layer)"]


GAPS = [
    # sizes the kernel would wrap or refuse
    ("[root]\nsize = '99999999999999999999999999g'\n", "root.size", "too large"),
    ("[root]\nsize = '9223372036854775808'\n", "root.size", "too large"),
    ("[root]\nsize = '8589934592g'\n", "root.size", "too large"),
    ("[root]\nsize = '101%'\n", "root.size", "more than 100%"),
    # a word and its negation: the later one used to win silently
    ("[[mount]]\ntarget = '/t'\ntype = 'tmpfs'\nattrs = ['ro', 'rw']\n", "mount[0].attrs", "ro and rw"),
    ("[[mount]]\ntarget = '/t'\ntype = 'tmpfs'\nattrs = ['exec', 'noexec']\n", "mount[0].attrs", "noexec and exec"),
    ("[[mount]]\ntarget = '/t'\ntype = 'tmpfs'\nattrs = ['nosuid', 'suid']\n", "mount[0].attrs", "nosuid and suid"),
    ("[[mount]]\ntarget = '/t'\ntype = 'tmpfs'\nattrs = ['dev', 'nodev']\n", "mount[0].attrs", "nodev and dev"),
    ("[root]\nattrs = ['suid', 'nosuid']\n", "root.attrs", "nosuid and suid"),
    # lengths the kernel refuses with ENAMETOOLONG
    ("[[path]]\npath = '/" + "d/" * 3000 + "x'\n", "path[0].path", "a path has at most 4095"),
    ("[[path]]\npath = '/" + "n" * 256 + "'\n", "path[0].path", "a file name has at most 255"),
    ("[[mount]]\ntarget = '/" + "n" * 300 + "'\ntype = 'tmpfs'\n", "mount[0].target", "at most 255"),
    ("[run]\ncwd = '/" + "d/" * 2100 + "'\n", "run.cwd", "at most 4095"),
    ("[[path]]\npath = '/l'\nsymlink = '" + "s" * 4096 + "'\n", "path[0].symlink", "at most 4095"),
]


@pytest.mark.parametrize("body,key,fragment", GAPS, ids=[c[1] + ":" + c[2][:20] for c in GAPS])
def test_validation_gap(tmp_path: Path, body: str, key: str, fragment: str) -> None:
    found = problems(tmp_path, body)
    assert any(p.startswith(key + ":") and fragment in p for p in found), found
    assert all(len(p) < 300 for p in found), found  # a long value is cut, the message stays one line


@pytest.mark.parametrize("size", ["0", "9223372036854775807", "8589934591g", "100%", "1%", "512M"])
def test_sizes_within_range(tmp_path: Path, size: str) -> None:
    assert load(str(write(tmp_path, f"[root]\nsize = '{size}'\n")), cwd=str(tmp_path)).root.size == size


def test_a_word_or_its_negation_alone_is_fine(tmp_path: Path) -> None:
    r = load(str(write(tmp_path, "[[mount]]\ntarget = '/t'\ntype = 'tmpfs'\nattrs = ['exec', 'ro']\n"
                                 "[[mount]]\ntarget = '/u'\ntype = 'tmpfs'\nattrs = ['noexec', 'noexec']\n")),
             cwd=str(tmp_path))
    assert [m.attrs for m in r.mounts] == [("ro", "nosuid", "nodev"), ("nosuid", "nodev", "noexec")]


def test_a_long_path_is_a_bad_recipe_not_a_failed_build(tmp_path: Path) -> None:
    # it used to pass validation and fail at a plan step with ENAMETOOLONG: exit 1, an 8.6 KB message
    import subprocess

    from conftest import nsbuild_cmd

    recipe = write(tmp_path, "[[path]]\npath = '/" + "d/" * 3000 + "x'\n")
    proc = subprocess.run(nsbuild_cmd() + ["plan", str(recipe)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert proc.stderr.startswith(f"nsbuild: error: {recipe}: path[0].path: '/d/d/") and len(proc.stderr) < 300
