"""A simulated power cut for SQLite: a VFS (apsw) that records every write, truncate and sync of
the files it opens, and a replay that rebuilds what the disk holds after a cut at any moment.

`kill -9` keeps the page cache, so a write that was never synced survives it; a power cut does
not. The model here is the harshest a correct disk may do: after a cut, each file holds exactly
what it held at its last sync, and every later write is gone (`Disk.durable`). Optionally some
of the writes since the last sync survive too, each whole or not at all and in any combination
(`Disk.durable(keep_unsynced=rnd)`): a disk reorders unsynced writes, and a sync is the only
barrier SQLite relies on.

Directory entries (what we assume, and why it is fair to SQLite):
- a file that existed when first opened was durable before the recording began (the outbox was
  created and closed by an earlier run);
- a file created during the recording exists after the cut only once it has been synced: the
  unix VFS, which this VFS wraps, fsyncs the directory at the first sync of a new WAL or
  journal, so before that its name may be lost with its data;
- a delete is durable at once (SQLite deletes the WAL only at close and the rollback journal only
  when the first open switches to WAL; neither happens between the cut points of a stream).

The `-shm` file is not recorded: it is an index SQLite rebuilds from the WAL when the first
connection opens the database, so its content after a cut never matters.

Writes go through to the real files as usual, so the connection works normally; the recording is
beside it. The VFS lives in apsw's own SQLite, which is why only an apsw connection can use it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import apsw

OpKind = Literal["create", "write", "truncate", "sync", "delete"]


@dataclass(frozen=True, slots=True)
class Op:
    kind: OpKind
    path: str
    offset: int = 0  # a write's offset, a truncate's new size
    data: bytes = b""


@dataclass
class Recording:
    """The files as they were when first opened, then every change in the order SQLite made it."""

    initial: dict[str, bytes] = field(default_factory=dict)
    ops: list[Op] = field(default_factory=list)


def _recorded(name: str | apsw.URIFilename | None) -> str | None:
    """The path to record, or None for files whose content never matters after a cut."""
    if name is None:
        return None  # a temporary file
    path = name.filename() if isinstance(name, apsw.URIFilename) else name
    return None if path.endswith("-shm") else path


class RecordingFile(apsw.VFSFile):
    def __init__(
        self,
        recording: Recording,
        path: str | None,
        name: str | apsw.URIFilename | None,
        flags: list[int],
    ) -> None:
        self._recording = recording
        self._path = path
        super().__init__("", name, flags)  # "" inherits the default VFS: the real unix file

    def _record(self, kind: OpKind, offset: int = 0, data: bytes = b"") -> None:
        if self._path is not None:
            self._recording.ops.append(Op(kind, self._path, offset, data))

    def xWrite(self, data: bytes, offset: int) -> None:  # noqa: N802 (apsw's names)
        super().xWrite(data, offset)
        self._record("write", offset, bytes(data))

    def xTruncate(self, newsize: int) -> None:  # noqa: N802
        super().xTruncate(newsize)
        self._record("truncate", newsize)

    def xSync(self, flags: int) -> None:  # noqa: N802
        super().xSync(flags)
        self._record("sync")


class RecordingVFS(apsw.VFS):
    """Register with `RecordingVFS(name)`; open with `apsw.Connection(path, vfs=name)`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.recording = Recording()
        self._existing: set[str] = set()  # recorded files that exist now
        self._seen: set[str] = set()
        super().__init__(name, "")

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> RecordingFile:  # noqa: N802
        path = _recorded(name)
        if path is not None and path not in self._existing:
            if path not in self._seen and Path(path).exists():
                self.recording.initial[path] = Path(path).read_bytes()
            else:
                self.recording.ops.append(Op("create", path))
            self._existing.add(path)
            self._seen.add(path)
        return RecordingFile(self.recording, path, name, flags)

    def xDelete(self, name: str, syncdir: bool) -> None:  # noqa: N802
        super().xDelete(name, syncdir)
        if _recorded(name) is not None:
            self.recording.ops.append(Op("delete", name))
            self._existing.discard(name)

    def close(self) -> None:
        self.unregister()


@dataclass
class _File:
    live: bytearray
    durable: bytes | None  # None: the name itself would be lost at a cut
    unsynced: list[Op] = field(default_factory=list)


class Disk:
    """Replays a recording op by op; at any point, `durable()` is what a power cut leaves."""

    def __init__(self, recording: Recording) -> None:
        self._ops = recording.ops
        self._files = {
            path: _File(bytearray(content), content) for path, content in recording.initial.items()
        }
        self.position = 0  # ops applied so far

    def advance_to(self, position: int) -> None:
        while self.position < position:
            self._apply(self._ops[self.position])
            self.position += 1

    def _apply(self, op: Op) -> None:
        if op.kind == "create":
            self._files[op.path] = _File(bytearray(), None)
        elif op.kind == "delete":
            self._files.pop(op.path, None)
        elif op.kind == "sync":
            file = self._files[op.path]
            file.durable = bytes(file.live)
            file.unsynced.clear()
        else:
            file = self._files[op.path]
            _change(file.live, op)
            file.unsynced.append(op)

    def live(self) -> dict[str, bytes]:
        """What the files hold now, power or not (equals the real files: the replay's check)."""
        return {path: bytes(file.live) for path, file in self._files.items()}

    def durable(self, keep_unsynced: random.Random | None = None) -> dict[str, bytes]:
        """The files after a cut here: each as of its last sync; with `keep_unsynced`, each write
        or truncate since then survives or not at random (in order: later ones land on top)."""
        images = {}
        for path, file in self._files.items():
            if file.durable is None:
                continue
            image = bytearray(file.durable)
            if keep_unsynced is not None:
                for op in file.unsynced:
                    if keep_unsynced.random() < 0.5:
                        _change(image, op)
            images[path] = bytes(image)
        return images


def _change(content: bytearray, op: Op) -> None:
    if op.kind == "truncate":
        del content[op.offset :]
        content.extend(bytes(op.offset - len(content)))
        return
    end = op.offset + len(op.data)
    if len(content) < op.offset:
        content.extend(bytes(op.offset - len(content)))  # a hole reads back as zeros
    content[op.offset : end] = op.data


def restore(images: dict[str, bytes], source_dir: Path, target_dir: Path) -> None:
    """Write the images of files under `source_dir` into `target_dir`, same names."""
    target_dir.mkdir(parents=True, exist_ok=True)
    for path, content in images.items():
        (target_dir / Path(path).relative_to(source_dir)).write_bytes(content)
