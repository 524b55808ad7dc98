"""Read back an offline W&B run from its `.wandb` file (LevelDB log format of protobuf Records):
what was really logged, not what a mock was told.

`run.finish()` returns before W&B's service process has written the whole file, so a run read in the
process that logged it is read again until its closing `exit` record is there."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7  # ":W&B" + magic (2 bytes) + version (1 byte); each record: crc (4) + length (2) + type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B datastore"
    pos, chunks = HEADER, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block trailer: too short for a record header
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        if pos + 7 + length > len(data):
            return  # a record still being written
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        chunks = payload if kind in (FULL, FIRST) else chunks + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            yield record


def finished_records(path: Path, timeout_s: float = 60.0) -> list:
    """Every record of a run file once its `exit` record is written (W&B writes it after `finish()` returns)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            written = list(records(path))
        except DecodeError:  # the writer is mid-record
            written = []
        if written and written[-1].WhichOneof("record_type") == "exit":
            return written
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout_s} s: the run never finished"
        time.sleep(0.1)


def read_run(run_dir: Path) -> dict:
    """{'group', 'tags', 'config': {...}, 'history': [{...}], 'summary': {...}} of one offline run dir."""
    (path,) = Path(run_dir).glob("*.wandb")
    run = {"group": None, "tags": [], "config": {}, "history": [], "summary": {}}
    for record in finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["group"], run["tags"] = record.run.run_group, list(record.run.tags)
        elif kind == "config":
            run["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            run["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.history.item})
        elif kind == "summary":
            run["summary"].update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.summary.update})
    return run
