"""Where the installed LD_PRELOAD shim lives."""

from __future__ import annotations

import os

LIBRARY_NAME = "libunixify.so"
SUPERVISOR_NAME = "unixify-supervise"
MATCHER_NAME = "libunixify-match.so"
DISPATCHER_NAME = "unixify-dispatcher"


ENV_OVERRIDE = "UNIXIFY_SHIM"
ENV_SUPERVISOR = "UNIXIFY_SUPERVISOR"


class ShimError(Exception):
    """The library cannot be preloaded; the message is complete."""


def library_path() -> str:
    """What to preload: the shim shipped inside this package, or the value of
    ``UNIXIFY_SHIM`` (for testing another build, e.g. one with sanitizers, whose runtime
    must come first: ``UNIXIFY_SHIM="libasan.so.8 /path/libunixify.so"``)."""
    return os.environ.get(ENV_OVERRIDE) or _package_file(LIBRARY_NAME)


def supervisor_path() -> str:
    """The seccomp back end's supervisor program, or ``UNIXIFY_SUPERVISOR``'s value."""
    return os.environ.get(ENV_SUPERVISOR) or _package_file(SUPERVISOR_NAME, "supervisor")


def matcher_path() -> str:
    """The shim's matcher alone, for ``unixify explain`` to load (never UNIXIFY_SHIM's:
    a preload list, maybe with a sanitizer runtime)."""
    return _package_file(MATCHER_NAME, "matcher")


def dispatcher_path() -> str:
    """The dispatcher's per-connection loop, which ``unixify dispatch`` runs."""
    return _package_file(DISPATCHER_NAME, "dispatcher")


def _package_file(name: str, what: str = "shim") -> str:
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    if _readable(here):
        return here
    # Editable installs keep what they build in the build tree; ask the package's
    # resource loader where it is.
    from importlib import resources

    resource = resources.files("unixify") / name
    with resources.as_file(resource) as path:
        if _readable(str(path)):
            return str(path)
    raise ShimError(f"the unixify {what} ({name}) is not installed, or this user "
                    f"(uid {os.getuid()}) cannot read it at {here}")


def _readable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)


def loadable_preload() -> str:
    """The preload list for the program, after checking that it can read every file in it.

    The dynamic linker skips a preload it cannot open with a warning and runs the program
    anyway, which would open the ports the rules convert: refuse instead."""
    value = library_path()
    for item in value.split():
        if "/" not in item:
            continue  # a bare name: the linker's search path finds it
        try:
            with open(item, "rb"):
                pass
        except OSError as exc:
            raise ShimError(f"the preload library {item} cannot be read by uid "
                            f"{os.getuid()} ({exc.strerror}); the program would run "
                            "unconverted") from None
    return value
