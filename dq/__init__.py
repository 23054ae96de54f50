"""dq: durable jobs for Python, with a live dashboard.

The public API (shared contract: docs/ and API.md) is re-exported here from
`dq.engine`; the dashboard lives in `dq.web` and the `dq-ui` composition in
`dq.app`. In the repository those are the top-level folders `engine/`, `web/`
and `app/`, linked into this package so that only `dq` is ever importable.
"""

from importlib.metadata import PackageNotFoundError, version

from .engine import *  # noqa: F403
from .engine import __all__ as __all__

try:
    __version__ = version("dq")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
