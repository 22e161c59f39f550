"""Durable storage of a Raft peer: the log, the term/vote meta data, snapshots, and in-memory
twins.

The bottom layer: it imports nothing else of the project. `storage.entry` (the log entry) is
the one type the disk and the wire share; this package's `__init__` imports nothing, so the
wire can import `storage.entry` without pulling in any disk code.

- `base`: the `LogStorage` and `MetaStorage` protocols;
- `log_storage` / `segment` / `recovery`: `SegmentLogStorage`, the durable segmented log (its
  directory, its file format, and how a segment is validated and repaired at open);
- `meta_storage`: `FileMetaStorage`, the durable term and vote;
- `snapshot_storage`: `SnapshotStorage`, durable snapshots (written to a temporary directory,
  checksummed, fsynced, renamed into place; the newest `keep` are kept);
- `memory`: `MemoryLogStorage`, `MemoryMetaStorage` and `MemorySnapshotStorage`, in-memory
  twins (tests only);
- `errors`: `StorageError` and its subclasses.
"""
