"""Exceptions that the CLI turns into one clear message and a documented exit code."""
from __future__ import annotations

import sys

EXIT_FAILED = 1  # a build, run or state operation failed
EXIT_USAGE = 2   # bad recipe or bad command line


class NsbuildError(Exception):
    """An error for the user: one sentence, an optional hint, an exit code. On its way up each level may
    add what it was doing (wrap), as crun's error chain does: "building 'dev-3': <the cause>"."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint
        self.context: list[str] = []  # outermost first

    def wrap(self, context: str) -> NsbuildError:
        """Add the caller's context and return the same error, to re-raise: `raise e.wrap("...")`."""
        self.context.insert(0, context)
        return self

    def __str__(self) -> str:
        return ": ".join([*self.context, super().__str__()])

    def report(self, as_json: bool = False) -> int:
        """Print the message (and hint) on stderr, as_json as one JSON object (still on stderr, so
        that stdout only ever holds a command's result); return the exit code."""
        if as_json:
            import json

            print(json.dumps(self.as_dict(), indent=2), file=sys.stderr)
            return self.exit_code
        print(f"nsbuild: error: {self}", file=sys.stderr)
        if self.hint:
            print(f"hint: {self.hint}", file=sys.stderr)
        return self.exit_code

    def as_dict(self) -> dict[str, object]:
        return {"error": str(self), "hint": self.hint, "key": None, "exit_code": self.exit_code}


class UsageError(NsbuildError):
    exit_code = EXIT_USAGE


class Problem:
    """One thing wrong in a recipe, at a key path like mount[3].attrs[1].

    A plain class: `nsbuild run` imports this module, and dataclasses costs ~10 ms to import.
    """

    __slots__ = ("key", "message", "hint")

    def __init__(self, key: str, message: str, hint: str = "") -> None:
        self.key, self.message, self.hint = key, message, hint

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Problem) and (self.key, self.message, self.hint) == (other.key, other.message,
                                                                                     other.hint)

    def __repr__(self) -> str:
        return f"Problem({self.key!r}, {self.message!r}, {self.hint!r})"

    def render(self, file: str) -> str:
        text = f"{file}: {self.key}: {self.message}" if self.key else f"{file}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


def os_error(e: OSError) -> NsbuildError:
    """One message for an OSError that no code path turned into one, mostly a user who is not root
    meeting root's files (the state directory, the content store): the file, the reason, what to do."""
    import errno
    import os

    if getattr(e, "filename", None):
        message = f"cannot use {e.filename}: {e.strerror or e}"
    else:
        message = f"{e.strerror or e}"
    hint = ""
    if e.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0:
        hint = ("it belongs to root: run nsbuild as root (sudo), or point --state-dir (NSBUILD_STATE_DIR) "
                "and NSBUILD_STORE at directories of your own")
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "check the file's permissions and the mount it is on"
    return NsbuildError(message, hint)


class RecipeError(NsbuildError):
    """Every problem found in one recipe, reported together."""

    exit_code = EXIT_USAGE

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.render(file) for p in problems))

    def as_dict(self) -> dict[str, object]:
        first = self.problems[0] if self.problems else Problem("", "")
        return dict(super().as_dict(), key=first.key or None, hint=self.hint or first.hint, file=self.file,
                    problems=[{"key": p.key or None, "message": p.message, "hint": p.hint} for p in self.problems])


class BuildError(NsbuildError):
    """A step of the plan failed; names the step, the recipe entry and the errno. step is the step's
    index in the plan (None when no step is to blame, e.g. a batch worker died), errno the call's."""

    def __init__(self, message: str, hint: str = "", step: int | None = None, errno: int | None = None) -> None:
        super().__init__(message, hint)
        self.step, self.errno = step, errno

    def as_dict(self) -> dict[str, object]:
        return dict(super().as_dict(), step=self.step, errno=self.errno)


class PersistError(BuildError):
    """A step of the plan's persist segment failed: the namespace was built but is not pinned. retry:
    whether building it again (on another CPU) can succeed, as it can when the kernel refused the
    namespace's id, or was short of resources for a moment."""

    def __init__(self, message: str, hint: str = "", step: int | None = None, errno: int | None = None,
                 retry: bool = False) -> None:
        super().__init__(message, hint, step, errno)
        self.retry = retry

    def as_dict(self) -> dict[str, object]:
        return dict(super().as_dict(), retry=self.retry)
