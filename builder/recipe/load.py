"""Loading a recipe: typed, validated data built from a TOML file. Knows nothing of syscalls.

Loading does the file-system checks a user wants before anything is mounted
(layer and source paths exist, what kind they are), so the planner stays pure.
Every problem is collected with its key path and reported at once.
"""
from __future__ import annotations

import difflib
import hashlib
import os
import posixpath
import re
import sys
from typing import Any

from builder.errors import Problem, RecipeError
from builder.recipe import checker as ck, idmap
from builder.recipe.checker import PATH_MAX
from builder.recipe.model import (DEFAULT_ATTRS, DEFAULT_PATH, FSTYPE_RE, MAX_FILE_CONTENT, NAME_RE,
                                  OTHER_DEFAULT_ATTRS, PROPAGATIONS, PSEUDO_TYPES, SPECIAL_TYPES, Layer, Mount,
                                  PathEntry, Recipe, Root, Run, is_under, parent_mount)
from builder.runtime.policy import NETWORKS, cap_word, valid_hostname, valid_user

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def load(path: str, cwd: str | None = None) -> Recipe:
    """Read, parse and validate a recipe file; raise RecipeError listing every problem."""
    shown = path
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise RecipeError(shown, [Problem("", f"cannot read the recipe: {e.strerror}",
                                          "check the path")]) from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(shown, [Problem("", f"not valid TOML: {e}", "fix the syntax")]) from None
    return parse(doc, os.path.abspath(path), hashlib.sha256(raw).hexdigest(),
                 cwd or os.getcwd(), shown)


def parse(doc: dict[str, Any], file: str, sha256: str, cwd: str, shown: str | None = None) -> Recipe:
    """Validate a parsed TOML document. `file` anchors relative host paths."""
    c = ck.Checker()
    base = posixpath.dirname(file)
    c.keys(doc, ("sandbox", "layer", "root", "mount", "path", "run"), "")

    sandbox = c.typed(doc, "sandbox", dict, "", {})
    c.keys(sandbox, ("name", "description"), "sandbox")
    name = c.typed(sandbox, "name", str, "sandbox")
    if "sandbox" in doc and name is None and "name" not in sandbox:
        c.add("sandbox.name", "is required", 'add name = "my-sandbox" under [sandbox]')
    elif "sandbox" not in doc:
        c.add("sandbox", "is required", 'add [sandbox] with name = "my-sandbox"')
    if name is not None and not NAME_RE.match(name):
        c.add("sandbox.name", f"'{name}' is not a valid name",
              "use 1-63 characters: lower-case letters, digits, '.', '_', '-', starting with a letter or digit")
    description = c.typed(sandbox, "description", str, "sandbox", "")

    layers = _layers(c, doc, base, cwd)
    root = _root(c, doc, base, cwd, layers)
    mounts = _mounts(c, doc, base, cwd)
    paths = _paths(c, doc, root, mounts)
    run = _run(c, doc)
    idmap.check_run_user(c, mounts, run, paths, image_may_set=bool(layers) and layers[-1].kind == "oci")

    if c.problems:
        raise RecipeError(shown or file, c.problems)
    mounts.sort(key=lambda m: m.target.count("/") if m.target != "/" else 0)  # parents first, stable
    return Recipe(file=file, sha256=sha256, name=name, description=description,
                  layers=tuple(layers), root=root, mounts=tuple(mounts), paths=tuple(paths), run=run,
                  inputs=tuple(dict.fromkeys(c.inputs)))


def _layers(c: ck.Checker, doc: dict[str, Any], base: str, cwd: str) -> list[Layer]:
    """[[layer]] tables: the keys every kind shares are checked here, the rest by the kind's parse()."""
    from builder.layers import kinds

    by_key, options = kinds.by_key(), kinds.options()
    sources = tuple(by_key)
    others = tuple(dict.fromkeys(k for keys in options.values() for k in keys))
    layers = []
    for where, t in ck.array_of_tables(c, doc, "layer"):
        found = [k for k in sources if k in t]
        c.keys(t, sources + others, where)
        if len(found) != 1:
            c.add(where, "needs exactly one source key" if not found else
                  f"has several source keys: {', '.join(found)}", "give one of: " + ", ".join(sources))
            continue
        key = found[0]
        for name in t:
            if name not in sources and name not in options[key] and name in others:
                users = [k for k, keys in options.items() if name in keys]
                c.add(f"{where}.{name}", f"does not apply to {key} layers", f"it applies to {', '.join(users)} layers")
        digest = c.typed(t, "sha256", str, where)
        devices = c.typed(t, "devices", bool, where, False)
        if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", digest):
            c.add(f"{where}.sha256", "must be 64 lower-case hex digits", "see `sha256sum FILE` or `nsbuild lock`")
            digest = None
        layer = by_key[key].parse(c, t, where, base, cwd, digest, devices)
        if layer:
            layers.append(layer)
    return layers


def _root(c: ck.Checker, doc: dict[str, Any], base: str, cwd: str, layers: list[Layer]) -> Root:
    t = c.typed(doc, "root", dict, "", {})
    c.keys(t, ("upper", "size", "attrs"), "root")
    upper_raw = c.typed(t, "upper", str, "root", "tmpfs")
    size = c.typed(t, "size", (str, int), "root")
    if size is not None:
        size = str(size)
        problem = ck.size_problem(size)
        if problem:
            c.add("root.size", problem, 'write e.g. "512m", "2g" or "10%"')
    attrs = ck.attrs(c, t.get("attrs"), "root", DEFAULT_ATTRS["root"])
    upper = upper_raw
    if upper_raw not in ("tmpfs", "none"):
        if size is not None:
            c.add("root.size", "only applies to upper = \"tmpfs\"")
        upper = c.host_path(upper_raw, base, cwd)
        parent = posixpath.dirname(upper)
        if os.path.exists(upper) and not os.path.isdir(upper):
            c.add("root.upper", f"'{upper_raw}' ({upper}) is not a directory",
                  'use "tmpfs", "none" or a directory for persistent changes')
        elif not os.path.isdir(parent):
            c.add("root.upper", f"the parent of '{upper_raw}' ({parent}) does not exist", "create it first")
        if not layers:
            c.add("root.upper", "a directory upper needs at least one [[layer]] below it (overlayfs)",
                  'add a [[layer]], or use upper = "tmpfs"')
        for layer in layers:  # binaries layers have no path ("" would contain everything), registry ones a URL
            if layer.path.startswith("/") and (is_under(layer.path, upper) or is_under(upper, layer.path)):
                c.add("root.upper", f"'{upper}' overlaps {layer.origin} ({layer.path})",
                      "overlayfs needs the upper directory outside every layer")
    elif upper_raw == "none":
        if not layers:
            c.add("root.upper", "upper = \"none\" needs at least one layer",
                  "add a [[layer]] or use upper = \"tmpfs\"")
        if size is not None:
            c.add("root.size", "only applies to upper = \"tmpfs\"")
    return Root(upper=upper, size=size, attrs=attrs)


def _mounts(c: ck.Checker, doc: dict[str, Any], base: str, cwd: str) -> list[Mount]:
    known_fs = ck.known_filesystems()
    mounts: list[Mount] = []
    seen: dict[str, str] = {}
    for where, t in ck.array_of_tables(c, doc, "mount"):
        c.keys(t, ("target", "type", "source", "options", "attrs", "propagation", "recursive",
                   "optional", "rw", "idmap"), where)
        target = c.typed(t, "target", str, where)
        fstype = c.typed(t, "type", str, where)
        if target is None and "target" not in t:
            c.add(f"{where}.target", "is required", 'e.g. target = "/tmp"')
        if fstype is None and "type" not in t:
            c.add(f"{where}.type", "is required", "e.g. type = \"tmpfs\"")
        if target is not None:
            target = c.sandbox_path(target, f"{where}.target")
        if fstype is not None and fstype not in SPECIAL_TYPES + PSEUDO_TYPES:
            if not FSTYPE_RE.match(fstype):
                c.add(f"{where}.type", f"'{fstype}' is not a filesystem type")
                fstype = None
            elif known_fs and fstype not in known_fs:
                close = difflib.get_close_matches(fstype, list(SPECIAL_TYPES + PSEUDO_TYPES) + sorted(known_fs), n=1)
                if close:
                    c.add(f"{where}.type", f"unknown filesystem type '{fstype}'", f"did you mean '{close[0]}'?")
                    fstype = None
        optional = c.typed(t, "optional", bool, where, False)
        rw = c.typed(t, "rw", bool, where)
        recursive = c.typed(t, "recursive", bool, where)
        propagation = c.typed(t, "propagation", str, where, "private")
        if propagation not in PROPAGATIONS:
            close = difflib.get_close_matches(propagation, PROPAGATIONS, n=1)
            c.add(f"{where}.propagation", f"unknown propagation '{propagation}'",
                  f"did you mean '{close[0]}'?" if close else "allowed: " + ", ".join(PROPAGATIONS))
        if propagation == "slave" and fstype not in ("bind", None):
            c.add(f"{where}.propagation", "'slave' needs a master: only a bind of a host mount has one",
                  "use private, shared or unbindable for a new filesystem")
        source_raw = c.typed(t, "source", str, where)
        if fstype != "bind" and fstype is not None:
            for key in ("rw", "recursive"):
                if key in t:
                    c.add(f"{where}.{key}", "only applies to type = \"bind\"")
        if fstype in PSEUDO_TYPES + ("dev",) and "source" in t:
            c.add(f"{where}.source", f"type '{fstype}' takes no source")
        defaults = DEFAULT_ATTRS.get(fstype or "", OTHER_DEFAULT_ATTRS)
        if fstype == "bind" and not rw:
            defaults = defaults + ("ro",)
        attrs = ck.attrs(c, t.get("attrs"), where, defaults)
        options = ck.options(c, t.get("options"), where)
        if fstype == "bind" and options:
            c.add(f"{where}.options", "bind mounts take no filesystem options", "use attrs instead")
        source, source_kind = None, None
        if fstype == "bind":
            if source_raw is None:
                if "source" not in t:
                    c.add(f"{where}.source", "is required for a bind mount", 'e.g. source = "/srv/data"')
                continue
            source = c.host_path(source_raw, base, cwd)
            if os.path.isdir(source):
                source_kind = "dir"
            elif os.path.exists(source):
                source_kind = "file"
            elif optional:
                continue  # skipped on purpose: an optional bind whose source is missing
            else:
                c.add(f"{where}.source", f"'{source_raw}' ({source}) does not exist",
                      "create it, fix the path (relative to the recipe file) or set optional = true")
                continue
        elif source_raw is not None:
            source = source_raw  # e.g. a device for ext4; handed to fsconfig as "source"
        mapping = idmap.recipe_key(c, t, where, fstype)
        if target is None or fstype is None:
            continue
        implied = (target + "/pts", target + "/shm") if fstype == "dev" else ()
        for t_ in (target,) + implied:
            if t_ in seen:
                c.add(f"{where}.target", f"'{t_}' is already mounted by {seen[t_]}",
                      "mount each target once")
            seen[t_] = where
        st = os.stat(source) if mapping == "owner" and source else None  # idmap = true: the owner appears as [run] user
        owner = (st.st_uid, st.st_gid) if st else (0, 0)
        mounts.append(Mount(where, target, fstype, source, source_kind, options, attrs, propagation,
                            True if recursive is None else recursive, mapping, owner))
    for m in mounts:
        holder = parent_mount(mounts, m.target)
        if holder is not None and holder.propagation == "shared" and holder.type == "bind":
            # attaching under a mount that is a peer of the host's mount propagates to the host
            c.add(f"{m.origin}.target", f"'{m.target}' is under {holder.origin} ({holder.target}), whose "
                  "propagation is 'shared': this mount would appear on the host too",
                  f"mount it elsewhere, or make {holder.origin} 'slave'")
    return mounts


def _paths(c: ck.Checker, doc: dict[str, Any], root: Root, mounts: list[Mount]) -> list[PathEntry]:
    out: list[PathEntry] = []
    seen: dict[str, str] = {}
    for where, t in ck.array_of_tables(c, doc, "path"):
        c.keys(t, ("path", "type", "content", "symlink", "mode", "uid", "gid"), where)
        target = c.typed(t, "path", str, where)
        if target is None:
            if "path" not in t:
                c.add(f"{where}.path", "is required", 'e.g. path = "/etc/hostname"')
            continue
        target = c.sandbox_path(target, f"{where}.path")
        content = c.typed(t, "content", str, where)
        link = c.typed(t, "symlink", str, where)
        kind = c.typed(t, "type", str, where)
        if kind is None:
            kind = "file" if content is not None else "symlink" if link is not None else "dir"
        if kind not in ("dir", "file", "symlink"):
            c.add(f"{where}.type", f"unknown path type '{kind}'", "use dir, file or symlink")
            continue
        if kind != "file" and content is not None:
            c.add(f"{where}.content", f"only applies to files, not a {kind}")
        if kind != "symlink" and link is not None:
            c.add(f"{where}.symlink", f"only applies to symlinks, not a {kind}")
        if kind == "symlink" and not link:
            c.add(f"{where}.symlink", "must name the link's target", 'e.g. symlink = "usr/bin"')
        elif kind == "symlink" and link and len(link.encode()) >= PATH_MAX:
            c.add(f"{where}.symlink", f"is {len(link.encode())} bytes long; a link target has at most "
                  f"{PATH_MAX - 1}", "use a shorter target")
        data = (content or "").encode()
        if len(data) > MAX_FILE_CONTENT:
            c.add(f"{where}.content", f"is {len(data)} bytes; at most {MAX_FILE_CONTENT} are allowed",
                  "ship large files in a layer")
        mode = ck.mode(c, t, "mode", where, 0o644 if kind == "file" else 0o755)
        uid = c.typed(t, "uid", int, where, 0)
        gid = c.typed(t, "gid", int, where, 0)
        for key, value in (("uid", uid), ("gid", gid)):
            if not 0 <= value < 2**32 - 1:
                c.add(f"{where}.{key}", f"{value} is not a valid id")
        if target is None:
            continue
        if not root.writable:
            c.add(f"{where}", "paths are written into the upper layer, but [root] upper = \"none\"",
                  "use upper = \"tmpfs\" or a directory")
        if target in seen:
            c.add(f"{where}.path", f"'{target}' is already created by {seen[target]}")
        seen[target] = where
        holder = parent_mount(mounts, target)
        if holder is not None or any(m.target == target for m in mounts):
            m = holder or next(m for m in mounts if m.target == target)
            c.add(f"{where}.path", f"'{target}' would be hidden by {m.origin} at {m.target}",
                  "paths are written into the root's upper layer, under no mount")
        out.append(PathEntry(where, target, kind, data, link or "", mode, uid, gid))
    # parents first, so /etc exists before /etc/hostname
    out.sort(key=lambda p: p.path.count("/"))
    return out


def _run(c: ck.Checker, doc: dict[str, Any]) -> Run:
    t = c.typed(doc, "run", dict, "", {})
    c.keys(t, ("command", "cwd", "env", "contained", "user", "hostname", "network", "capabilities"), "run")
    command = c.typed(t, "command", (list, str), "run", ["/bin/sh"])
    if isinstance(command, str):
        command = [command]
    if not command or not all(isinstance(a, str) and a for a in command):
        c.add("run.command", "must be a non-empty array of non-empty strings", 'e.g. ["/bin/bash", "-l"]')
    cwd = c.typed(t, "cwd", str, "run", "/")
    c.sandbox_path(cwd, "run.cwd", allow_root=True)
    env_raw = c.typed(t, "env", dict, "run", {})
    env: dict[str, str] = {"PATH": DEFAULT_PATH, "HOME": "/root"}
    for k, v in env_raw.items():
        if not isinstance(v, str):
            c.add(f"run.env.{k}", "must be a string")
        elif not k or "=" in k or "\x00" in k + v:
            c.add(f"run.env.{k}", "is not a valid environment variable")
        else:
            env[k] = v
    contained = c.typed(t, "contained", bool, "run", True)
    user = c.typed(t, "user", str, "run", "root")
    if isinstance(user, str) and not valid_user(user):
        c.add("run.user", f"'{user}' is not root, a user NAME or UID[:GID]", 'e.g. user = "1000:1000"')
    hostname = c.typed(t, "hostname", str, "run")
    if isinstance(hostname, str) and not valid_hostname(hostname):
        c.add("run.hostname", f"'{hostname}' is not a valid host name",
              "letters, digits and '-', in dot-separated labels, at most 64 characters")
    network = c.typed(t, "network", str, "run", "host")
    if isinstance(network, str) and network not in NETWORKS:
        c.add("run.network", f"unknown network '{network}'", "use host (the host's network) or none (only lo)")
    caps = c.typed(t, "capabilities", list, "run", [])
    for i, word in enumerate(caps if isinstance(caps, list) else []):
        if not isinstance(word, str) or cap_word(word) is None:
            c.add(f"run.capabilities[{i}]", f"'{word}' is not a capability",
                  'e.g. "+CAP_NET_RAW" to add, "-CAP_CHOWN" to drop, "-ALL" for none')
    origins = [(k, "recipe") for k in ("command", "cwd", "user") if k in t]
    origins += [(f"env.{k}", "recipe") for k in env_raw]
    return Run(tuple(command), cwd, tuple(sorted(env.items())), "command" in t, contained is not False,
               user if isinstance(user, str) else "root", hostname if isinstance(hostname, str) else None,
               network if network in NETWORKS else "host",
               tuple(w for w in caps if isinstance(w, str)) if isinstance(caps, list) else (),
               tuple(sorted(origins)))
