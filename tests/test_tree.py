"""builder.check.tree: the merged view of a recipe's tree, and the pre-flight of its command, on real layer dirs."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.check import elf, ldso, view
from builder.recipe import load as loader, model as recipe
from builder.errors import Problem, UsageError
from builder.check.command import check_command, check_run
from builder.check.tree import OPAQUE_XATTR, SandboxTree
from conftest import IS_ROOT
from test_elf import copy_tree
from elfcraft import foreign_copy, make_elf

HOST_EM = elf.host_arch()[1]
KEY = "run.command"


def info(path: str) -> elf.ElfInfo:
    kind = elf.identify_file(path)
    assert isinstance(kind, elf.ElfInfo)
    return kind


SH = os.path.realpath("/bin/sh")   # e.g. /usr/bin/dash
INTERP = info(SH).interp or ""      # e.g. /lib64/ld-linux-x86-64.so.2
INTERP_REAL = os.path.realpath(INTERP)
CLOSURE = ldso.closure(["/bin/sh", "/usr/bin/env"])
LIBC_REAL = next(p for p in CLOSURE if p.endswith("/libc.so.6") and not os.path.islink(p))
ENV = {"PATH": recipe.DEFAULT_PATH}




def whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))


def load(tmp_path: Path, body: str) -> recipe.Recipe:
    (tmp_path / "r.toml").write_text('[sandbox]\nname = "t"\n' + body)
    return loader.load(str(tmp_path / "r.toml"))


def layers_toml(*names: str) -> str:
    return "".join(f'[[layer]]\npath = "{n}"\n' for n in names)


@pytest.fixture
def sh_layers(tmp_path: Path) -> Path:
    """The closure of sh and env split in two layers, libraries below and programs above, and an empty top."""
    tools = [p for p in CLOSURE if p == "/bin" or p.startswith(("/bin/", "/usr/bin/"))]
    copy_tree([p for p in CLOSURE if p not in tools], tmp_path / "base")
    copy_tree(tools, tmp_path / "tools")
    (tmp_path / "top").mkdir()
    return tmp_path


def sh_tree(tmp_path: Path, body: str = "") -> SandboxTree:
    return SandboxTree(load(tmp_path, layers_toml("base", "tools", "top") + body))


# -- the merged view ------------------------------------------------------------------------------


def test_lookup_merges_layers_paths_and_mounts(tmp_path: Path) -> None:
    base, top, host = tmp_path / "base", tmp_path / "top", tmp_path / "hostdir"
    for f in ("etc/passwd", "data/a", "data/b", "opt/x/file", "var/lib/thing", "usr/lib/libz.so"):
        (base / f).parent.mkdir(parents=True, exist_ok=True)
        (base / f).write_text(f)
    os.symlink("usr/lib", base / "lib")
    (top / "etc").mkdir(parents=True)
    os.setxattr(top / "etc", OPAQUE_XATTR, b"y")
    (top / "etc/hostname").write_text("top\n")
    whiteout(top / "data/b")
    (top / "opt").mkdir()
    (top / "opt/x").write_text("a file over a directory")
    os.symlink("/etc/hostname", top / "abs")
    os.symlink("../../../../data/a", top / "up")
    os.symlink("self", top / "self")
    host.mkdir()
    (host / "served").write_text("from the host")
    os.symlink("/etc/hostname", host / "back")
    tree = SandboxTree(load(tmp_path, layers_toml("base", "top") + """
[[path]]
path = "/etc/motd"
content = "hi\\n"
[[path]]
path = "/lib/extra.conf"
content = "x"
[[mount]]
target = "/var"
type = "tmpfs"
[[mount]]
target = "/srv"
type = "bind"
source = "hostdir"
[[mount]]
target = "/dev"
type = "dev"
"""))
    hostname = tree.lookup("/etc/hostname")
    assert hostname is not None
    assert (hostname.origin, hostname.host, hostname.kind) == ("layer[1]", str(top / "etc/hostname"), "file")
    assert tree.lookup("/etc/passwd") is None                  # the opaque /etc of layer[1] hides it
    motd = tree.lookup("/etc/motd")
    assert motd is not None and (motd.origin, motd.host, motd.data) == ("path[0]", None, b"hi\n")
    assert tree.names("/etc") == ["hostname", "motd"]
    assert tree.lookup("/data/b") is None and tree.names("/data") == ["a"]  # whited out
    x = tree.lookup("/opt/x")
    assert x is not None and x.kind == "file" and tree.lookup("/opt/x/file") is None
    # symlinks resolve in the sandbox: absolute ones from its root, ".." stops at "/"
    abs_ = tree.lookup("/abs")
    assert abs_ is not None and (abs_.path, abs_.links, abs_.origin) == ("/etc/hostname", ("/abs",), "layer[1]")
    up = tree.lookup("/up")
    assert up is not None and up.path == "/data/a"
    link = tree.lookup("/abs", follow=False)
    assert link is not None and link.kind == "symlink"
    with pytest.raises(view.SymlinkLoop):
        tree.lookup("/self")
    # a [[path]] lands where its parent resolves, as openat2(RESOLVE_IN_ROOT) puts it
    extra = tree.lookup("/usr/lib/extra.conf")
    assert extra is not None and extra.origin == "path[1]" and tree.names("/usr/lib") == ["extra.conf", "libz.so"]
    # mounts: a tmpfs hides what is below, a bind shows the host source, /dev gets its nodes
    var = tree.lookup("/var")
    assert var is not None and var.origin == "mount[0]" and tree.lookup("/var/lib/thing") is None
    served = tree.lookup("/srv/served")
    assert served is not None and (served.origin, served.host) == ("mount[1]", str(host / "served"))
    back = tree.lookup("/srv/back")  # a link inside a bind still resolves in the sandbox
    assert back is not None and back.path == "/etc/hostname" and back.origin == "layer[1]"
    null = tree.lookup("/dev/null")
    assert null is not None and (null.kind, null.origin) == ("other", "mount[2]")
    assert tree.names("/") == ["abs", "data", "dev", "etc", "lib", "opt", "self", "srv", "up", "usr", "var"]


def test_single_layer_without_upper(tmp_path: Path) -> None:
    (tmp_path / "only/bin").mkdir(parents=True)
    (tmp_path / "only/bin/tool").write_text("#!/bin/sh\n")
    tree = SandboxTree(load(tmp_path, layers_toml("only") + '[root]\nupper = "none"\n'))
    root, tool = tree.lookup("/"), tree.lookup("/bin/tool")
    assert root is not None and root.origin == "layer[0]" and root.host == str(tmp_path / "only")
    assert tool is not None and tool.origin == "layer[0]"


def test_kept_upper_sits_on_top(tmp_path: Path) -> None:
    (tmp_path / "base/etc").mkdir(parents=True)
    (tmp_path / "base/etc/hostname").write_text("base\n")
    (tmp_path / "kept/etc").mkdir(parents=True)
    (tmp_path / "kept/etc/hostname").write_text("kept\n")
    tree = SandboxTree(load(tmp_path, layers_toml("base") + '[root]\nupper = "kept"\n'))
    hostname = tree.lookup("/etc/hostname")
    assert hostname is not None and hostname.origin == "root.upper"


def test_layer_dirs_stand_in_for_layers(tmp_path: Path) -> None:
    (tmp_path / "declared").mkdir()
    (tmp_path / "mounted/etc").mkdir(parents=True)
    (tmp_path / "mounted/etc/os-release").write_text("x")
    r = load(tmp_path, layers_toml("declared"))
    entry = SandboxTree(r, [str(tmp_path / "mounted")]).lookup("/etc/os-release")
    assert entry is not None and entry.host == str(tmp_path / "mounted/etc/os-release")
    assert SandboxTree(r).lookup("/etc/os-release") is None
    with pytest.raises(UsageError, match="2 layer directories for 1 layers"):
        SandboxTree(r, ["/a", "/b"])


# -- the pre-flight ----------------------------------------------------------------------------


def test_complete_tree_passes(sh_layers: Path) -> None:
    tree = sh_tree(sh_layers, """
[[path]]
path = "/usr/local/bin/hello"
content = "#!/bin/sh\\necho hello\\n"
mode = "0755"
[[path]]
path = "/usr/local/bin/via-env"
content = "#!/usr/bin/env sh\\n"
mode = "0755"
""")
    for argv in (("sh", "-c", "true"), ("/bin/sh",), ("env",), ("hello",), ("/usr/local/bin/via-env",)):
        assert check_command(tree, argv, ENV) == [], argv
    assert check_command(tree, ("bin/sh",), {}, cwd="/") == []  # relative to the cwd; PATH defaults
    assert check_run(tree) == []


def test_command_not_in_path(sh_layers: Path) -> None:
    tree = sh_tree(sh_layers)
    assert check_command(tree, ("nosuch", "-x"), ENV) == [
        Problem(KEY, f"'nosuch' is not found in PATH ({recipe.DEFAULT_PATH})",
                "add a layer that provides it, or give its absolute path")]
    assert check_command(tree, ("sh",), {"PATH": "/opt/bin"}) == [
        Problem(KEY, "'sh' is not found in PATH (/opt/bin)", "add a layer that provides it, or give its absolute path")]


def test_missing_library_names_the_whiteout_that_hides_it(sh_layers: Path) -> None:
    whiteout(sh_layers / "top" / LIBC_REAL.lstrip("/"))
    tree = sh_tree(sh_layers)
    assert tree.lookup(LIBC_REAL) is None
    problems = check_command(tree, ("sh",), ENV)
    assert len(problems) == 1
    assert problems[0].key == KEY
    assert problems[0].message.startswith(f"libc.so.6, needed by {SH} (layer[1]), is not found in the sandbox "
                                          f"(searched ")
    assert os.path.dirname(LIBC_REAL) in problems[0].message or "/lib/" in problems[0].message
    assert problems[0].hint == f"layer[0] has {LIBC_REAL}, but a whiteout at {LIBC_REAL} in layer[2] hides it"


def test_missing_elf_interpreter(sh_layers: Path) -> None:
    whiteout(sh_layers / "top" / INTERP_REAL.lstrip("/"))
    leads = f" (it leads to {INTERP_REAL})" if INTERP_REAL != INTERP else ""
    assert check_command(sh_tree(sh_layers), ("/bin/sh",), ENV) == [  # libc's DT_NEEDED on it is not repeated
        Problem(KEY, f"{INTERP}, the ELF interpreter of {SH} (layer[1]), does not exist in the sandbox{leads}",
                f"layer[0] has {INTERP_REAL}, but a whiteout at {INTERP_REAL} in layer[2] hides it")]
    os.unlink(sh_layers / "base" / INTERP_REAL.lstrip("/"))  # now no layer has it: name the nearest parent
    problems = check_command(sh_tree(sh_layers), ("/bin/sh",), ENV)
    parent = os.path.dirname(INTERP_REAL)
    assert [p.hint for p in problems] == [
        f"its nearest existing parent, {parent}, comes from layer[2]: add it to that layer or one above"]


def test_wrong_architecture(sh_layers: Path) -> None:
    other = "EM_AARCH64" if HOST_EM != "EM_AARCH64" else "EM_X86_64"
    (sh_layers / "top/usr/local/bin").mkdir(parents=True)
    foreign_copy(SH, sh_layers / "top/usr/local/bin/foreign", other)
    elfclass, machine = elf.host_arch()
    assert check_command(sh_tree(sh_layers), ("foreign",), ENV) == [
        Problem(KEY, f"/usr/local/bin/foreign (layer[2]) is an ELF{info(SH).elfclass} {other} program, "
                     f"but this host runs ELF{elfclass} {machine}", f"use a layer built for {os.uname().machine}")]


def test_script_whose_interpreter_is_missing(sh_layers: Path) -> None:
    tree = sh_tree(sh_layers, """
[[path]]
path = "/usr/local/bin/hello"
content = "#!/usr/bin/perl -w\\nprint 1;\\n"
mode = "0755"
[[path]]
path = "/usr/local/bin/py"
content = "#!/usr/bin/env python3\\n"
mode = "0755"
""")
    parent = tree.resolve("/usr/bin/perl").parent
    assert check_command(tree, ("hello",), ENV) == [
        Problem(KEY, "/usr/bin/perl, the #! interpreter of /usr/local/bin/hello (path[0]), does not exist in the "
                     "sandbox",
                f"its nearest existing parent, {parent}, comes from layer[1]: add it to that layer or one above")]
    assert check_command(tree, ("py",), ENV) == [
        Problem(KEY, f"'python3', run by the #! line of /usr/local/bin/py (path[1]) through env, is not found in "
                     f"PATH ({recipe.DEFAULT_PATH})", "add a layer that provides it, or give its absolute path")]


def test_files_that_cannot_run(sh_layers: Path) -> None:
    tree = sh_tree(sh_layers, """
[[path]]
path = "/usr/local/bin/data"
content = "#!/bin/sh\\n"
mode = "0644"
[[path]]
path = "/usr/local/bin/text"
content = "echo no shebang\\n"
mode = "0755"
""")
    assert [p.message for p in check_command(tree, ("/usr/local/bin/data",), ENV)] == [
        "/usr/local/bin/data is not executable (mode 0644, path[0])"]
    assert [p.message for p in check_command(tree, ("/usr/local/bin/text",), ENV)] == [
        "/usr/local/bin/text (path[1]) is neither an ELF executable nor a #! script"]
    assert [p.message for p in check_command(tree, ("/usr/local",), ENV)] == [
        "/usr/local is not a regular file but a dir (path[0])"]  # made on the way to path[0]


def test_symlink_loop(sh_layers: Path) -> None:
    tree = sh_tree(sh_layers, """
[[path]]
path = "/usr/local/bin/loop"
symlink = "loop2"
[[path]]
path = "/usr/local/bin/loop2"
symlink = "/usr/local/bin/loop"
""")
    assert check_command(tree, ("/usr/local/bin/loop",), ENV) == [
        Problem(KEY, "/usr/local/bin/loop cannot be resolved: too many levels of symbolic links",
                "the link /usr/local/bin/loop (path[0]) leads into a loop")]


def test_symlinks_never_reach_the_host(sh_layers: Path) -> None:
    assert os.path.exists("/usr/bin/python3") and not os.path.lexists(sh_layers / "tools/usr/bin/python3")
    bin_ = sh_layers / "top/usr/local/bin"
    bin_.mkdir(parents=True)
    os.symlink("/usr/bin/python3", bin_ / "py")
    os.symlink("../../../../../../../../../usr/bin/python3", bin_ / "py-up")
    tree = sh_tree(sh_layers)
    assert tree.lookup("/usr/local/bin/py") is None
    parent = tree.resolve("/usr/bin/python3").parent
    hint = f"its nearest existing parent, {parent}, comes from layer[1]: add it to that layer or one above"
    for name in ("py", "py-up"):
        assert check_command(tree, (f"/usr/local/bin/{name}",), ENV) == [
            Problem(KEY, f"/usr/local/bin/{name} does not exist in the sandbox (it leads to /usr/bin/python3)", hint)]


def app_layer(root: Path, **prog: object) -> None:
    make_elf(root / "opt/app/lib/libfoo.so.1", needed=("libc.so.6",), soname="libfoo.so.1", machine=HOST_EM)
    make_elf(root / "opt/app/bin/prog", needed=("libfoo.so.1",), interp=INTERP, machine=HOST_EM,
             **prog)  # type: ignore[arg-type]


PROC = '[[mount]]\ntarget = "/proc"\ntype = "proc"\n'


def test_library_search_rules_apply_in_the_tree(sh_layers: Path) -> None:
    app_layer(sh_layers / "top", runpath="$ORIGIN/../lib")
    make_elf(sh_layers / "top/opt/app/bin/plain", needed=("libfoo.so.1",), interp=INTERP, machine=HOST_EM)
    tree = sh_tree(sh_layers, PROC)
    assert check_command(tree, ("/opt/app/bin/prog",), ENV) == []
    [problem] = check_command(tree, ("/opt/app/bin/plain",), ENV)
    assert problem.message.startswith("libfoo.so.1, needed by /opt/app/bin/plain (layer[2]), is not found")
    assert check_command(tree, ("/opt/app/bin/plain",), dict(ENV, LD_LIBRARY_PATH="/opt/app/lib")) == []
    conf = sh_tree(sh_layers, PROC + """
[[path]]
path = "/etc/ld.so.conf"
content = "include /etc/ld.so.conf.d/*.conf\\n"
[[path]]
path = "/etc/ld.so.conf.d/app.conf"
content = "/opt/app/lib\\n"
""")
    assert check_command(conf, ("/opt/app/bin/plain",), ENV) == []


def test_program_origin_needs_proc(sh_layers: Path) -> None:
    app_layer(sh_layers / "top", rpath="$ORIGIN/../lib")
    [problem] = check_command(sh_tree(sh_layers), ("/opt/app/bin/prog",), ENV)
    assert problem.message.startswith("libfoo.so.1, needed by /opt/app/bin/prog (layer[2]), is not found")
    assert problem.hint == ("/opt/app/bin/prog finds libraries through $ORIGIN, which ld.so reads from "
                            '/proc/self/exe: add a [[mount]] with type = "proc" on /proc')


@pytest.mark.skipif(not shutil.which("gcc") or not IS_ROOT or not shutil.which("chroot"),
                    reason="needs gcc, root and chroot(1)")
def test_origin_without_proc_fails_for_the_real_ld_so_too(sh_layers: Path) -> None:
    """What test_program_origin_needs_proc models, shown with a compiled program in a chroot without /proc."""
    app = sh_layers / "top/opt/app"
    (app / "lib").mkdir(parents=True)
    (app / "bin").mkdir()
    (app / "foo.c").write_text("int foo(void) { return 42; }\n")
    (app / "main.c").write_text("int foo(void); int main(void) { return foo() == 42 ? 0 : 1; }\n")
    for args in (["-shared", "-fPIC", "-Wl,-soname,libfoo.so.1", "-o", "lib/libfoo.so.1", "foo.c"],
                 ["-Wl,-rpath,$ORIGIN/../lib", "-o", "bin/prog", "main.c", "lib/libfoo.so.1"]):
        subprocess.run(["gcc", *args], check=True, cwd=app, capture_output=True)
    merged = sh_layers / "merged"
    for layer in ("base", "tools", "top"):
        shutil.copytree(sh_layers / layer, merged, symlinks=True, dirs_exist_ok=True)
    run = subprocess.run([shutil.which("chroot") or "chroot", str(merged), "/opt/app/bin/prog"],
                         capture_output=True, text=True)
    assert run.returncode == 127 and "libfoo.so.1" in run.stderr
    assert [p.message.split(",")[0] for p in check_command(sh_tree(sh_layers), ("/opt/app/bin/prog",), ENV)] == [
        "libfoo.so.1"]
    assert check_command(sh_tree(sh_layers, PROC), ("/opt/app/bin/prog",), ENV) == []


def test_missing_under_a_mount_names_the_mount(sh_layers: Path) -> None:
    tree = sh_tree(sh_layers, '[[mount]]\ntarget = "/work"\ntype = "tmpfs"\n')
    assert check_command(tree, ("/work/build.sh",), ENV) == [
        Problem(KEY, "/work/build.sh does not exist in the sandbox",
                "its nearest existing parent, /work, comes from mount[0]")]
    assert check_command(tree, (), ENV) == [Problem(KEY, "is empty", 'e.g. command = ["/bin/sh"]')]


def test_noexec_mounts(sh_layers: Path) -> None:
    (sh_layers / "scripts").mkdir()
    (sh_layers / "scripts/build.sh").write_text("#!/bin/sh\n")
    (sh_layers / "scripts/build.sh").chmod(0o755)
    bind = '[[mount]]\ntarget = "/scripts"\ntype = "bind"\nsource = "scripts"\n'
    assert check_command(sh_tree(sh_layers, bind), ("/scripts/build.sh",), ENV) == []
    assert check_command(sh_tree(sh_layers, bind + 'attrs = ["noexec"]\n'), ("/scripts/build.sh",), ENV) == [
        Problem(KEY, "/scripts/build.sh is on a noexec mount (mount[0])", 'drop "noexec" from mount[0].attrs')]
    tree = sh_tree(sh_layers, '[root]\nattrs = ["noexec"]\n')
    sh = next(f"{d}/sh" for d in recipe.DEFAULT_PATH.split(":") if tree.lookup(f"{d}/sh"))
    assert check_command(tree, ("sh",), ENV) == [
        Problem(KEY, f"{sh} is on a noexec mount (root)", 'drop "noexec" from root.attrs')]
