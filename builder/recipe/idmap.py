"""Id mappings of idmapped binds ([[mount]] idmap): parsed, checked, resolved, written as map text.

An explicit mapping is mount(8)'s X-mount.idmap syntax: "u:FROM:TO:COUNT g:FROM:TO:COUNT", or
"FROM:TO:COUNT" (also "b:FROM:TO:COUNT") for uids and gids alike, entries separated by spaces.
COUNT ids from FROM on, as the source's filesystem stores them, appear as the ids from TO on in
the sandbox. That is what mount(8) does: libmount writes the fields to /proc/PID/uid_map in this
order, and the kernel looks a file's stored id up in the first column (map_id_down in
make_vfsuid). util-linux's own man page had the names of the two fields the wrong way round
(util-linux issue #4608, fixed by PR #4613).

idmap = true maps the owner of the bind source (its uid and gid) to the sandbox's [run] user.
"""
from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from builder.recipe.checker import Checker
    from builder.recipe.model import Mount, PathEntry, Recipe, Run

Extent = tuple[int, int, int]  # FROM, TO, COUNT: a line of /proc/PID/uid_map ("inside outside count")
Maps = tuple[tuple[Extent, ...], tuple[Extent, ...]]  # uids, gids

MAX_ID = 2**32 - 2      # (uid_t)-1 is no id
MAX_EXTENTS = 340       # the kernel's limit of lines in a uid_map or gid_map
MAX_TEXT = 4095         # and of bytes written to one (less than a page)
_ENTRY = re.compile(r"(?:([ugb]):)?([0-9]{1,10}):([0-9]{1,10}):([0-9]{1,10})")
EXAMPLE = ('e.g. idmap = "u:1000:0:1 g:1000:0:1": FROM:TO:COUNT, ids FROM.. of the source appear as TO.. '
           'in the sandbox (mount(8)\'s X-mount.idmap)')


def parse(mapping: str) -> Maps:
    """The uid and gid extents of a mapping; ValueError saying what is wrong."""
    uids: list[Extent] = []
    gids: list[Extent] = []
    entries = mapping.split()
    if not entries:
        raise ValueError("is empty: give true or a mapping")
    for entry in entries:
        m = _ENTRY.fullmatch(entry)
        if not m:
            raise ValueError(f"'{entry}' is not [u:|g:|b:]FROM:TO:COUNT")
        kind = m.group(1) or "b"
        start, to, count = int(m.group(2)), int(m.group(3)), int(m.group(4))
        if count < 1:
            raise ValueError(f"'{entry}' maps no ids (COUNT is 0)")
        if start + count - 1 > MAX_ID or to + count - 1 > MAX_ID:
            raise ValueError(f"'{entry}' reaches beyond the largest id, {MAX_ID}")
        for ids, k in ((uids, "u"), (gids, "g")):
            if kind in (k, "b"):
                ids.append((start, to, count))
    for ids, what in ((uids, "uid"), (gids, "gid")):
        if not ids:
            other = "g" if what == "uid" else "u"
            raise ValueError(f"maps no {what}s: give {what[0]}:FROM:TO:COUNT beside the {other}: entries, "
                             "or FROM:TO:COUNT for both")
        check(tuple(ids), what)
    return tuple(uids), tuple(gids)


def check(ids: tuple[Extent, ...], what: str) -> None:
    """What the kernel would refuse when the map is written: overlaps, too many lines, too long."""
    if len(ids) > MAX_EXTENTS:
        raise ValueError(f"has {len(ids)} {what} entries; the kernel takes at most {MAX_EXTENTS}")
    if len(text(ids)) > MAX_TEXT:
        raise ValueError(f"its {what} map is {len(text(ids))} bytes; the kernel takes at most {MAX_TEXT}")
    for column, side in ((0, "FROM"), (1, "TO")):
        spans = sorted((e[column], e[column] + e[2] - 1) for e in ids)
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            if b0 <= a1:
                raise ValueError(f"the {what} ranges {a0}-{a1} and {b0}-{b1} overlap on the {side} side")


def text(ids: tuple[Extent, ...]) -> bytes:
    """The lines to write to /proc/PID/uid_map (or gid_map)."""
    return "".join(f"{a} {b} {c}\n" for a, b, c in ids).encode()


def owner_maps(owner: tuple[int, int], ids: tuple[int, int]) -> Maps:
    """idmap = true: the source's owner appears as the run user (uid and gid), nobody else is mapped."""
    return ((owner[0], ids[0], 1),), ((owner[1], ids[1], 1),)


def run_ids(user: str, passwd: bytes | None) -> tuple[int, int]:
    """The uid and gid that [run] user runs as, resolved as `nsbuild run` does (passwd.py) against the
    /etc/passwd the recipe writes ([[path]] content), if it writes one. Without it, only "root" and
    "UID:GID" are known when the sandbox is built; ValueError otherwise."""
    if passwd is not None:
        from builder.runtime import passwd as pw

        found = pw.account(user, pw.rows(passwd))
        if found is not None:
            return found[0], found[1]
        if user != "root":
            raise ValueError(f"[run] user '{user}' is not in the /etc/passwd that the recipe writes")
    uid, colon, gid = user.partition(":")
    if user == "root":
        return 0, 0
    if colon and uid.isascii() and uid.isdigit() and gid.isascii() and gid.isdigit():
        return int(uid), int(gid)
    raise ValueError(f"[run] user '{user}' is looked up in the sandbox's /etc/passwd only when it runs, and the "
                     "recipe writes no /etc/passwd ([[path]]) that says its uid and gid now")


RUN_IDS_HINT = 'give [run] user = "UID:GID", or an explicit mapping: ' + EXAMPLE.removeprefix("e.g. ")


def recipe_key(c: Checker, t: dict[str, Any], where: str, fstype: str | None) -> str:
    """[[mount]] idmap as load.py stores it in Mount.idmap: "", "owner" or the mapping, entries
    normalized; problems go to `c` under WHERE.idmap."""
    if "idmap" not in t:
        return ""
    value, key = t["idmap"], f"{where}.idmap"
    if fstype != "bind":
        if fstype is not None:
            c.add(key, 'only applies to type = "bind"', "an idmapped mount shows a host directory with other owners")
        return ""
    if isinstance(value, bool):
        return "owner" if value else ""
    if not isinstance(value, str):
        c.add(key, "must be true, false or a mapping string", EXAMPLE)
        return ""
    try:
        parse(value)
    except ValueError as e:
        c.add(key, str(e), EXAMPLE)
        return ""
    return " ".join(value.split())


def check_run_user(c: Checker, mounts: list[Mount], run: Run, paths: list[PathEntry], image_may_set: bool) -> None:
    """idmap = true needs the [run] user's ids when the sandbox is built: say so at load time, unless
    the user is still to come from an OCI image's config (then the planner says it, the same way)."""
    if image_may_set and not any(key == "user" for key, _ in run.origins):
        return
    for m in mounts:
        if m.idmap == "owner":
            try:
                run_ids(run.user, written_passwd(paths))
            except ValueError as e:
                c.add(f"{m.origin}.idmap", str(e), RUN_IDS_HINT)


def written_passwd(paths: tuple[PathEntry, ...] | list[PathEntry]) -> bytes | None:
    return next((p.content for p in paths if p.path == "/etc/passwd" and p.kind == "file"), None)


def maps_of(m: Mount, recipe: Recipe) -> Maps:
    """The uid and gid extents of an idmapped bind, for the planner; RecipeError if the run user's
    ids are not known (a user that an image's config named after the recipe was loaded)."""
    if m.idmap != "owner":
        return parse(m.idmap)
    try:
        return owner_maps(m.owner, run_ids(recipe.run.user, written_passwd(recipe.paths)))
    except ValueError as e:
        from builder.errors import Problem, RecipeError

        raise RecipeError(recipe.file, [Problem(f"{m.origin}.idmap", str(e), RUN_IDS_HINT)]) from None
