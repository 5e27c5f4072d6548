"""A faithful fake of the TensorDock API: real HTTP, both dialects, billing, faults, virtual time."""

from .app import DroppedReplyError, FakeTensorDockApp
from .catalog import Catalog, load_catalog
from .dialects import DIALECTS, Dialect
from .server import FakeServer, build_fake, in_process_transport, serve_forever
from .state import Bill, FakeApiError, FakeInstance, FakeTensorDock, Faults, Rules, Timings

__all__ = [
    "DIALECTS",
    "Bill",
    "Catalog",
    "Dialect",
    "DroppedReplyError",
    "FakeApiError",
    "FakeInstance",
    "FakeServer",
    "FakeTensorDock",
    "FakeTensorDockApp",
    "Faults",
    "Rules",
    "Timings",
    "build_fake",
    "in_process_transport",
    "load_catalog",
    "serve_forever",
]
