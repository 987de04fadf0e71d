"""cluster.shell: the Trio shell around the sans-I/O core, i.e. the part of cluster/ that does I/O.

A subpackage rather than modules beside the core, so the core's purity scan (tests/test_layering.py) and
its rule that `import cluster` loads no trio keep holding without exceptions. Layout:
- member: `ClusterMember`, which owns a `SwimNode`, feeds it packets, streams and timer ticks, performs its
  actions, and answers the node's questions (members, owner of a key, change notifications, the shared map)
- transport: the `Transport` contract (best-effort packets, one-shot reliable streams) and its UDP + TCP
  implementation; the simulator brings its own through `TransportFactory`
- discovery: seeds to addresses through the injected resolver, join backoff, and the rule for which addresses
  the shell may send to
"""

from .discovery import Resolver as Resolver
from .discovery import usable_peer_address as usable_peer_address
from .member import ClusterMember as ClusterMember
from .member import ClusterStatistics as ClusterStatistics
from .member import ShellRuntime as ShellRuntime
from .member import ShellSettings as ShellSettings
from .transport import SocketTransport as SocketTransport
from .transport import StreamHandler as StreamHandler
from .transport import Transport as Transport
from .transport import TransportError as TransportError
from .transport import TransportFactory as TransportFactory
from .transport import TransportLimits as TransportLimits
from .transport import TransportStatistics as TransportStatistics
from .transport import open_socket_transport as open_socket_transport
