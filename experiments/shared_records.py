"""Simulation: large records stored once in a file instead of sent in every message.

The final test sends the same model to every node, and so does a round to its sampled
clients. In Flower's simulation engine every message is serialized to a Ray worker on
its own, so a 1 MB model sent to 10,000 nodes is 10 GB copied through the process that
also runs the ServerApp. :class:`SharedRecordsGrid` sits between the ServerApp and the
engine's grid: each ArrayRecord of at least :data:`MIN_BYTES` in an outgoing message is
written once to ``DIR/shared-records/`` (one file per distinct record object) and left
out of the message, whose config names the file instead (``shared-records``). On the
node, ``client.app``'s first mod reads the file (once per worker process) and puts the
record back before the handler runs, so every handler and every result is unchanged.
Only simulated nodes follow such a reference; a device never reads files a server
names. The folder is removed when the run ends.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedgeo.array_file import StoredArray, write_arrays
from fedgeo.message_keys import CONFIG, SHARED_RECORDS

MIN_BYTES = 64 * 1024
"""Records smaller than this travel in the message as before."""
KEEP = 8
"""Files of the latest distinct records kept (older ones belong to finished steps)."""


class SharedRecordsGrid(Grid):
    """A grid that stores each large outgoing ArrayRecord once in ``folder`` (see the
    module docstring); everything else is passed to ``grid``."""

    def __init__(self, grid: Grid, folder: Path) -> None:
        self.grid = grid
        self.folder = Path(folder)
        self._files: OrderedDict[int, tuple[ArrayRecord, Path]] = OrderedDict()
        self._contents: OrderedDict[int, tuple[RecordDict, RecordDict]] = OrderedDict()

    # --- Grid: delegated ---------------------------------------------------------
    def set_run(self, run_id: int) -> None:
        self.grid.set_run(run_id)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):
        return self.grid.send_and_receive(
            [self._share(m) for m in messages], timeout=timeout
        )

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages([self._share(m) for m in messages])

    # --- sharing -----------------------------------------------------------------
    def _share(self, message: Message) -> Message:
        if message.has_error():
            return message
        content = message.content
        known = self._contents.get(id(content))
        if known is not None and known[0] is content:  # a content sent to many nodes
            message.content = known[1]
            return message
        message.content = self._shared_content(content)
        self._contents[id(content)] = (content, message.content)
        while len(self._contents) > KEEP:
            self._contents.popitem(last=False)
        return message

    def _shared_content(self, content: RecordDict) -> RecordDict:
        """``content`` with its large ArrayRecords replaced by file references."""
        config = content.get(CONFIG)
        large = {
            name: record
            for name, record in content.array_records.items()
            if sum(len(a.data) for a in record.values()) >= MIN_BYTES
        }
        if not large or not isinstance(config, ConfigRecord):
            return content
        shared = {name: str(self._file(record)) for name, record in large.items()}
        kept = RecordDict({k: v for k, v in content.items() if k not in large and k != CONFIG})
        kept[CONFIG] = ConfigRecord({**config, SHARED_RECORDS: json.dumps(shared)})
        return kept

    def _file(self, record: ArrayRecord) -> Path:
        """The file holding ``record`` (written on first use)."""
        found = self._files.get(id(record))
        if found is not None and found[0] is record:
            self._files.move_to_end(id(record))
            return found[1]
        path = self.folder / f"{uuid.uuid4().hex}.arrays"
        arrays = [
            StoredArray(key, a.dtype, tuple(a.shape), a.stype, a.data)
            for key, a in record.items()
        ]
        write_arrays(path, arrays)
        self._files[id(record)] = (record, path)  # the reference keeps the id unique
        while len(self._files) > KEEP:
            _, (_, old) = self._files.popitem(last=False)
            old.unlink(missing_ok=True)
        return path

    def close(self) -> None:
        """Remove the folder and every file in it."""
        self._files.clear()
        self._contents.clear()
        shutil.rmtree(self.folder, ignore_errors=True)
