"""builder.check.elf: ELF facts and the host closure, on real host binaries and small ELF files written here."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.check import elf, ldso, view as views
from builder.layers.kinds.binaries import copy_host_paths as _copy_host_paths
from builder.errors import UsageError
from conftest import IS_ROOT
from elfcraft import make_elf

HOST_EM = elf.host_arch()[1]
PROGRAMS = ["/bin/sh", "/usr/bin/env", shutil.which("ls") or "/bin/ls", "/usr/bin/python3"]


def info(path: str) -> elf.ElfInfo:
    kind = elf.identify_file(path)
    assert isinstance(kind, elf.ElfInfo)
    return kind


SH_INTERP = info("/bin/sh").interp


def ldd(path: str) -> list[str]:
    """The libraries the real ld.so loads for `path` (ldd runs it in list mode)."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
    return re.findall(r"=> (/\S+)", out)


def copy_tree(paths: list[str], root: Path) -> None:
    """What a binaries layer does with a closure (store.py): parents made, files copied, links recreated."""
    root.mkdir(parents=True, exist_ok=True)
    _copy_host_paths(paths, str(root))


def symlink_prefixes(path: str) -> list[str]:
    """The components of `path`, as written, that are symlinks in a real directory."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(2, len(parts) + 1)]
    return [p for p in prefixes if os.path.islink(p) and os.path.realpath(os.path.dirname(p)) == os.path.dirname(p)]


# -- facts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("machine, expected", [
    ("x86_64", (64, "EM_X86_64")), ("aarch64", (64, "EM_AARCH64")), ("i686", (32, "EM_386")),
    ("armv7l", (32, "EM_ARM")), ("riscv64", (64, "EM_RISCV")), ("ppc64le", (64, "EM_PPC64")),
    ("s390x", (64, "EM_S390")),
])
def test_host_arch_table(machine: str, expected: tuple[int, str]) -> None:
    assert elf.host_arch(machine) == expected


def test_host_arch_matches_host_binaries() -> None:
    assert info("/bin/sh").arch == elf.host_arch()
    assert info("/bin/sh").runs_on_host()
    with pytest.raises(UsageError, match="unknown machine 'pdp11'"):
        elf.host_arch("pdp11")


def test_identify_host_elf() -> None:
    sh = info("/bin/sh")
    assert sh.interp and os.path.exists(sh.interp)
    assert "libc.so.6" in sh.needed
    libc = info(os.path.realpath(ldd("/bin/sh")[0]))
    assert libc.soname == "libc.so.6" and libc.runs_on_host()


def test_identify_scripts_and_others(tmp_path: Path) -> None:
    cases = {
        b"#!/bin/sh\necho\n": elf.Script("/bin/sh"),
        b"#! /usr/bin/env  python3 -u \nprint()\n": elf.Script("/usr/bin/env", "python3 -u"),
        b"#!\t/bin/bash\t-e\n": elf.Script("/bin/bash", "-e"),
        b"#!\n": None,
        b"plain text\n": None,
        open("/bin/sh", "rb").read(40): None,  # a truncated ELF is not loadable
    }
    for i, (data, expected) in enumerate(cases.items()):
        (tmp_path / str(i)).write_bytes(data)
        with open(tmp_path / str(i), "rb") as f:
            assert elf.identify(f) == expected, data


def test_crafted_elf_reads_back(tmp_path: Path) -> None:
    path = make_elf(tmp_path / "prog", needed=("liba.so.1", "libb.so.2"), rpath="/r1:$ORIGIN/r2", runpath="/x",
                    soname="prog.so", interp="/lib/ld.so", elfclass=32, machine="EM_ARM")
    assert info(str(path)) == elf.ElfInfo(32, "EM_ARM", True, "/lib/ld.so", ("liba.so.1", "libb.so.2"),
                                          ("/r1", "$ORIGIN/r2"), ("/x",), "prog.so")


# -- closure of host binaries ---------------------------------------------------------------------


@pytest.mark.parametrize("program", PROGRAMS)
def test_closure_agrees_with_ld_so(program: str) -> None:
    result = ldso.closure([program])
    interp = info(os.path.realpath(program)).interp
    assert interp is not None
    assert os.path.realpath(program) in result
    assert os.path.realpath(interp) in result
    for lib in ldd(program):
        assert os.path.realpath(lib) in result, lib
    for p in [program, interp] + ldd(program):
        for link in symlink_prefixes(p):
            assert link in result, f"{link} (on the way to {p}) is missing"
    for p in result:  # every entry exists and sits in a real directory: a copier can replay the list
        assert os.path.lexists(p)
        assert os.path.realpath(os.path.dirname(p)) == os.path.dirname(p), p


def test_closure_of_sh_lists_libc_interpreter_and_links() -> None:
    result = ldso.closure(["/bin/sh"])
    libc = next(lib for lib in ldd("/bin/sh") if lib.endswith("/libc.so.6"))
    assert os.path.realpath(libc) in result
    links = [p for p in result if os.path.islink(p)]
    assert links, "a Debian-like host reaches sh and the interpreter through symlinks"
    interp = info("/bin/sh").interp or ""
    assert set(symlink_prefixes(interp)) <= set(links)
    assert all(os.path.isfile(p) for p in result if p not in links)


def test_closure_is_deterministic() -> None:
    one = ldso.closure(["/bin/sh", "/usr/bin/env"])
    assert one == ldso.closure(["/usr/bin/env", "/bin/sh", "/bin/sh"])
    assert one == sorted(one, key=lambda p: p.split("/"))
    assert len(one) == len(set(one))


@pytest.mark.skipif(not IS_ROOT or not shutil.which("chroot"), reason="needs root and chroot(1)")
def test_closure_runs_in_an_empty_root(tmp_path: Path) -> None:
    ls = shutil.which("ls") or "/bin/ls"
    copy_tree(ldso.closure(["/bin/sh", ls, "/usr/bin/env"]), tmp_path)
    script = f"{ls} /; /usr/bin/env -i A=1 /usr/bin/env"
    out = subprocess.run([shutil.which("chroot") or "chroot", str(tmp_path), "/bin/sh", "-c", script],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "usr" in out.stdout.split() and "A=1" in out.stdout.split()


def test_closure_of_script_follows_its_interpreter(tmp_path: Path) -> None:
    script = tmp_path / "hello"
    script.write_text("#!/bin/sh\necho hi\n")
    assert ldso.closure([str(script)]) == sorted({str(script)} | set(ldso.closure(["/bin/sh"])),
                                                key=lambda p: p.split("/"))


def test_closure_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("just text\n")
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    with pytest.raises(UsageError, match="neither an ELF file nor a #! script"):
        ldso.closure([str(tmp_path / "data")])
    with pytest.raises(UsageError, match="does not exist"):
        ldso.closure([str(tmp_path / "nothing")])
    with pytest.raises(UsageError, match="not an absolute host path"):
        ldso.closure(["bin/sh"])
    with pytest.raises(views.SymlinkLoop, match="too many levels of symbolic links"):
        ldso.closure([str(tmp_path / "a")])


# -- ld.so's search rules, on ELF files written for the case ----------------------------------------


def app(tmp_path: Path, **prog: object) -> Path:
    """bin/prog needing libfoo.so.1 (in lib/), which needs libbar.so.1 (in lib/ too) and libc."""
    make_elf(tmp_path / "lib/libfoo.so.1", needed=("libbar.so.1", "libc.so.6"), soname="libfoo.so.1",
             machine=HOST_EM)
    make_elf(tmp_path / "lib/libbar.so.1", soname="libbar.so.1", machine=HOST_EM)
    return make_elf(tmp_path / "bin/prog", needed=("libfoo.so.1",), interp=SH_INTERP, machine=HOST_EM,
                    **prog)  # type: ignore[arg-type]


def libc_closure(tmp_path: Path) -> set[str]:
    """What any program with sh's interpreter and libc needs: the part of a closure that is not the app."""
    base = make_elf(tmp_path / "base", needed=("libc.so.6",), interp=SH_INTERP, machine=HOST_EM)
    return set(ldso.closure([str(base)])) - {str(base)}


def test_rpath_origin_is_inherited_by_libraries(tmp_path: Path) -> None:
    prog = app(tmp_path, rpath="$ORIGIN/../lib")
    lib = str(tmp_path / "lib")
    assert set(ldso.closure([str(prog)])) == {str(prog), f"{lib}/libfoo.so.1", f"{lib}/libbar.so.1"} | libc_closure(
        tmp_path)


def test_runpath_serves_only_direct_dependencies(tmp_path: Path) -> None:
    prog = app(tmp_path, runpath="${ORIGIN}/../lib")
    with pytest.raises(ldso.MissingLibrary) as e:
        ldso.closure([str(prog)])
    assert (e.value.soname, e.value.needed_by) == ("libbar.so.1", f"{tmp_path}/lib/libfoo.so.1")
    assert isinstance(e.value, UsageError)
    assert f"{tmp_path}/lib" not in e.value.searched  # libfoo has no path of its own; prog's RUNPATH is not its


def test_runpath_turns_rpath_off(tmp_path: Path) -> None:
    prog = app(tmp_path, rpath="$ORIGIN/../lib", runpath="$ORIGIN/../nowhere")
    with pytest.raises(ldso.MissingLibrary) as e:
        ldso.closure([str(prog)])
    assert e.value.soname == "libfoo.so.1"
    assert e.value.searched[0] == f"{tmp_path}/bin/../nowhere"


def test_candidates_of_another_class_are_skipped(tmp_path: Path) -> None:
    make_elf(tmp_path / "lib32/libfoo.so.1", elfclass=32, machine="EM_386")
    make_elf(tmp_path / "lib64/libfoo.so.1", machine=HOST_EM)
    prog = make_elf(tmp_path / "bin/prog", needed=("libfoo.so.1",), runpath="$ORIGIN/../lib32:$ORIGIN/../lib64",
                    machine=HOST_EM)
    assert ldso.closure([str(prog)]) == [str(prog), f"{tmp_path}/lib64/libfoo.so.1"]
    os.unlink(tmp_path / "lib64/libfoo.so.1")
    with pytest.raises(ldso.MissingLibrary, match="libfoo.so.1") as e:
        ldso.closure([str(prog)])
    assert "ELF32 EM_386" in e.value.hint


def test_symlinked_library_dirs_are_listed_hop_by_hop(tmp_path: Path) -> None:
    real = tmp_path / "lib.real"
    make_elf(real / "libfoo.so.1.2.3", soname="libfoo.so.1", machine=HOST_EM)
    os.symlink("libfoo.so.1.2.3", real / "libfoo.so.1")
    os.symlink("lib.real", tmp_path / "lib")
    make_elf(tmp_path / "bin/prog", needed=("libfoo.so.1",), runpath="$ORIGIN/../lib", machine=HOST_EM)
    os.symlink("bin/prog", tmp_path / "run")
    t = str(tmp_path)
    assert ldso.closure([f"{t}/run"]) == [f"{t}/bin/prog", f"{t}/lib", f"{t}/lib.real/libfoo.so.1",
                                         f"{t}/lib.real/libfoo.so.1.2.3", f"{t}/run"]


def test_missing_interpreter(tmp_path: Path) -> None:
    prog = make_elf(tmp_path / "prog", interp=f"{tmp_path}/no/ld.so", machine=HOST_EM)
    with pytest.raises(ldso.MissingLibrary, match="the ELF interpreter .*/no/ld.so, needed by .*/prog"):
        ldso.closure([str(prog)])


def test_ld_so_conf_includes_relative_globs(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "ld.so.conf.d").mkdir(parents=True)
    (etc / "ld.so.conf").write_text("# comment\n/first/lib\ninclude ld.so.conf.d/*.conf\nhwcap 0 nosegneg\n")
    (etc / "ld.so.conf.d/b.conf").write_text("/b/lib  # trailing comment\n")
    (etc / "ld.so.conf.d/a.conf").write_text("/a/lib\ninclude /etc/ld.so.conf\n")  # a loop is read once
    (etc / "ld.so.conf.d/.hidden.conf").write_text("/hidden\n")
    (etc / "ld.so.conf.d/c.txt").write_text("/c\n")
    assert ldso.Search(views.HostView(str(tmp_path))).conf_dirs() == ("/first/lib", "/a/lib", "/b/lib")


def test_a_view_keeps_symlinks_inside_its_root(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    os.symlink("/usr/lib", tmp_path / "abs")          # absolute: restarts at the view's root
    os.symlink("../../../../usr", tmp_path / "up")    # ".." stops at the view's root
    view = views.HostView(str(tmp_path))
    assert view.resolve("/abs").path == "/usr/lib"
    assert view.resolve("/up/lib/../lib").path == "/usr/lib"
    assert view.resolve("/up/lib").links == ("/up",)
    missing = view.resolve("/abs/nothing/deeper")
    assert (missing.node, missing.path, missing.parent) == (None, "/usr/lib/nothing/deeper", "/usr/lib")
    os.symlink(".", tmp_path / "usr/lib/here")        # "." is the link's own directory
    (tmp_path / "usr/lib/file").write_text("")
    assert view.resolve("/usr/lib/here/here/file").path == "/usr/lib/file"
    assert view.resolve("/usr/lib/file/x").node is None     # ENOTDIR


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")
def test_compiled_program_rpath_and_runpath_as_ld_so_does(tmp_path: Path) -> None:
    """The same rules, checked against the real ld.so: a DT_RPATH program runs, a DT_RUNPATH one does not."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "bar.c").write_text("int bar(void) { return 7; }\n")
    (src / "foo.c").write_text("int bar(void); int foo(void) { return bar() * 6; }\n")
    (src / "main.c").write_text("int foo(void); int main(void) { return foo() == 42 ? 0 : 1; }\n")
    lib = tmp_path / "app/lib"
    lib.mkdir(parents=True)
    (tmp_path / "app/bin").mkdir()

    def cc(*args: str) -> None:
        subprocess.run(["gcc", *args], check=True, cwd=src, capture_output=True)

    cc("-shared", "-fPIC", "-Wl,-soname,libbar.so.1", "-o", f"{lib}/libbar.so.1", "bar.c")
    cc("-shared", "-fPIC", "-Wl,-soname,libfoo.so.1", "-o", f"{lib}/libfoo.so.1", "foo.c", f"{lib}/libbar.so.1")
    for name, tags in (("old", "--disable-new-dtags"), ("new", "--enable-new-dtags")):
        cc(f"-Wl,{tags},-rpath,$ORIGIN/../lib", "-o", f"{tmp_path}/app/bin/{name}", "main.c", f"{lib}/libfoo.so.1")
    old, new = f"{tmp_path}/app/bin/old", f"{tmp_path}/app/bin/new"

    assert subprocess.run([old]).returncode == 0
    assert {f"{lib}/libfoo.so.1", f"{lib}/libbar.so.1"} <= set(ldso.closure([old]))
    run = subprocess.run([new], capture_output=True, text=True)
    assert run.returncode != 0 and "libbar.so.1" in run.stderr
    with pytest.raises(ldso.MissingLibrary, match="libbar.so.1"):
        ldso.closure([new])
