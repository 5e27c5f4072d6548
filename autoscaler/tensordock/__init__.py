"""The TensorDock provider's values and errors: what the core may know of TensorDock.

Dependency-free (pydantic only), so that importing the decision core or a policy loads no HTTP
client. The client itself is `autoscaler.tensordock.client.TensorDockClient`; the fake server is
`autoscaler.tensordock.fake`.
"""

from .errors import (
    AuthenticationError,
    BadRequestError,
    CapacityUnavailableError,
    ConnectionFailedError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    TensorDockError,
    TransportError,
)
from .models import (
    CreateInstanceRequest,
    GpuAllocation,
    Hostnode,
    HostnodeGpu,
    Instance,
    InstanceStatus,
    Location,
    LocationGpuOffer,
    ModifyInstanceRequest,
    PortForward,
    Pricing,
    WireFormat,
)
from .ratelimit import TokenBucket

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "CapacityUnavailableError",
    "ConnectionFailedError",
    "CreateInstanceRequest",
    "GpuAllocation",
    "Hostnode",
    "HostnodeGpu",
    "Instance",
    "InstanceStatus",
    "Location",
    "LocationGpuOffer",
    "MalformedResponseError",
    "ModifyInstanceRequest",
    "NotFoundError",
    "PortForward",
    "Pricing",
    "RateLimitedError",
    "RequestTimeoutError",
    "ServerError",
    "TensorDockError",
    "TokenBucket",
    "TransportError",
    "WireFormat",
]
