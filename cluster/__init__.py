"""cluster: SWIM/Lifeguard membership and rendezvous ownership, as a sans-I/O core.

General layout (one mechanism per module; none of them imports trio, time, socket or the global random):
- swim: `SwimNode`, the member state machine, and the only object a shell drives
- actions: what a node asks of its shell (`SendPacket`, `OpenStream`) and reports (`MemberEvent`,
  `SharedChanged`, `CounterChanged`)
- membership: the member table and its fixed-order rules (alive / suspect / dead, refutation)
- probe, suspicion, awareness, broadcast: round-robin probing, Lifeguard's suspicion timeouts, the local
  health multiplier, the retransmit queue
- messages, codec, envelope, keyring: wire values, msgpack schemas, the authenticated replay-checked envelope,
  HMAC keys and their rotation
- config: `SwimConfig` with memberlist's LAN / WAN / local presets
- ownership: `Rendezvous`, the owner of each queue key over the live members
- shared: `SharedMap`, cluster-wide settings as last-writer-wins registers, gossiped and carried by push-pull
- counters: `CounterMap`, cluster-wide amounts as grow-only counters (one entry per node, merged by max), carried
  the same two ways
- testing: `SimCluster`, many nodes on a simulated network and virtual time (imported on its own, as
  `cluster.testing`, so production code never loads it)
- shell (a subpackage, imported on its own as `cluster.shell`, because it is the Trio part): `ClusterMember`
  runs a SwimNode on a transport (UDP + TCP sockets, or the simulator's) and answers who owns which key
"""

from .actions import Action as Action
from .actions import CounterChanged as CounterChanged
from .actions import MemberEvent as MemberEvent
from .actions import MemberEventKind as MemberEventKind
from .actions import OpenStream as OpenStream
from .actions import SendPacket as SendPacket
from .actions import SharedChanged as SharedChanged
from .config import SwimConfig as SwimConfig
from .counters import CounterMap as CounterMap
from .counters import CounterView as CounterView
from .envelope import DropCounts as DropCounts
from .keyring import InsecureClusterError as InsecureClusterError
from .keyring import Keyring as Keyring
from .messages import Address as Address
from .messages import CounterEntry as CounterEntry
from .messages import MemberInfo as MemberInfo
from .messages import MemberState as MemberState
from .messages import SharedEntry as SharedEntry
from .messages import SharedValue as SharedValue
from .ownership import Rendezvous as Rendezvous
from .shared import SharedMap as SharedMap
from .shared import SharedView as SharedView
from .swim import SwimNode as SwimNode
from .swim import SwimStatistics as SwimStatistics
