"""The installed package's version, read from its metadata so it is written once (pyproject.toml)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ltstg")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
