"""Where the installed LD_PRELOAD shim lives."""

from __future__ import annotations

import os

LIBRARY_NAME = "libunixify.so"


ENV_OVERRIDE = "UNIXIFY_SHIM"


def library_path() -> str:
    """What to preload: the shim shipped inside this package, or the value of
    ``UNIXIFY_SHIM`` (for testing another build, e.g. one with sanitizers, whose runtime
    must come first: ``UNIXIFY_SHIM="libasan.so.8 /path/libunixify.so"``)."""
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        return override
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)
    if os.path.exists(here):
        return here
    # Editable installs keep the built library in the build tree; ask the package's
    # resource loader where it is.
    from importlib import resources

    resource = resources.files("unixify") / LIBRARY_NAME
    with resources.as_file(resource) as path:
        if path.exists():
            return str(path)
    raise FileNotFoundError(f"the unixify shim ({LIBRARY_NAME}) is not installed")
