"""Durable job storage for a node.

General layout:
- base: the `Store` protocol, `StoreError`, `StoreStatistics`, and the record encoding both stores share.
- sqlite: the production store (one SQLite file, WAL, group commit in one worker thread).
- memory: the same contract in process memory, for the simulator and fast tests; survives simulated restarts.
"""

from edge.store.base import Store as Store
from edge.store.base import StoreError as StoreError
from edge.store.base import StoreStatistics as StoreStatistics
from edge.store.memory import MemoryStoreData as MemoryStoreData
from edge.store.memory import open_memory_store as open_memory_store
from edge.store.sqlite import open_sqlite_store as open_sqlite_store
