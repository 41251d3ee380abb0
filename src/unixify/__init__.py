"""unixify: run programs that only speak IP sockets over Unix domain sockets."""

__version__ = "0.1.0"
