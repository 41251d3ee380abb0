"""Where the installed LD_PRELOAD shim lives."""

from __future__ import annotations

import os

LIBRARY_NAME = "libunixify.so"


ENV_OVERRIDE = "UNIXIFY_SHIM"


class ShimError(Exception):
    """The library cannot be preloaded; the message is complete."""


def library_path() -> str:
    """What to preload: the shim shipped inside this package, or the value of
    ``UNIXIFY_SHIM`` (for testing another build, e.g. one with sanitizers, whose runtime
    must come first: ``UNIXIFY_SHIM="libasan.so.8 /path/libunixify.so"``)."""
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        return override
    found = packaged_file(LIBRARY_NAME)
    if found is None:
        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)
        raise ShimError(f"the unixify shim ({LIBRARY_NAME}) is not installed, or this user "
                        f"(uid {os.getuid()}) cannot read it at {here}")
    return found


def packaged_file(name: str) -> str | None:
    """The path of a file installed inside this package (the shim, the dispatcher's
    loop), or None when it is missing or unreadable."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    if _readable(here):
        return here
    # Editable installs keep built files in the build tree; ask the package's resource
    # loader where they are.
    from importlib import resources

    resource = resources.files("unixify") / name
    with resources.as_file(resource) as path:
        if _readable(str(path)):
            return str(path)
    return None


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
