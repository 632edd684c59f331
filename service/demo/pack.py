"""Build the demo's shipped files from trained diffs (a maintainer's step, not the server's):

    python -m service.demo.pack --quality quality.json lang-hau.safetensors lang-swa.safetensors \\
        task-ner-en.safetensors -o service/demo/files

Each diff is re-labelled for shipping (``base_model`` becomes the demo base's name, tag
``demo`` added; the values, indices, heads and fingerprint are untouched), encoded in the
compact form (:mod:`diffs_store.compact`) and listed in ``manifest.json`` with the sha256
of the compact bytes and the id of the diff they decode to: what the server publishes is
exactly the decoded diff whose F1 was measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from diffs_store.compact import decode, encode
from diffs_store.format import SparseDiff, diff_id, load_diff

DEMO_BASE_NAME = "multilingual-e5-small-demo"


def relabel(diff: SparseDiff, base_model: str) -> SparseDiff:
    tags = tuple(dict.fromkeys((*diff.meta.tags, "demo")))
    return SparseDiff(diff.meta.model_copy(update={"base_model": base_model, "tags": tags}), diff.sparse, diff.dense)


def pack(diffs: Sequence[SparseDiff], out: Path, base_model: str = DEMO_BASE_NAME,
         quality: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write ``<kind>-<key>.csftz`` files and ``manifest.json`` into ``out``; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    fingerprints = {d.meta.base_fingerprint for d in diffs}
    if len(fingerprints) != 1:
        raise ValueError(f"the demo diffs must share one base; they name {len(fingerprints)}")
    items = []
    for d in diffs:
        d = relabel(d, base_model)
        data = encode(d)
        name = f"{d.meta.kind.value}-{d.meta.key}.csftz"
        (out / name).write_bytes(data)
        items.append({"file": name, "kind": d.meta.kind.value, "key": d.meta.key, "nnz": d.nnz,
                      "sha256": hashlib.sha256(data).hexdigest(), "diff_id": diff_id(decode(data).to_bytes())})
    manifest = {"base_model": base_model, "base_fingerprint": fingerprints.pop(), "diffs": items,
                "quality": quality or []}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Pack trained diffs as the server's demo files.")
    p.add_argument("diffs", nargs="+", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--base-model", default=DEMO_BASE_NAME)
    p.add_argument("--quality", type=Path, help="JSON list of {language, task, f1, task_only_f1, ...} rows.")
    args = p.parse_args(argv)
    quality = json.loads(args.quality.read_text()) if args.quality else []
    manifest = pack([load_diff(path) for path in args.diffs], args.out, args.base_model, quality)
    total = 0
    for item in manifest["diffs"]:
        size = (args.out / item["file"]).stat().st_size
        total += size
        print(f"{item['file']}: {item['nnz']:,} entries, {size:,} bytes ({size / max(item['nnz'], 1):.2f} B/entry)")
    print(f"total {total:,} bytes\n")
    print(quality_table(quality))


def quality_table(rows: list[dict[str, Any]]) -> str:
    """The README's table of the demo pairs' F1 (shipped diffs; trained diffs for comparison)."""
    lines = ["| pair | F1, float32 | task diff alone | F1, bfloat16 | task alone, bfloat16 | trained (uncompacted) diffs, float32 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['language']} + {r['task']} | **{r['shipped_float32_f1']}** | {r['shipped_float32_task_only_f1']} | "
                     f"{r['shipped_bfloat16_f1']} | {r['shipped_bfloat16_task_only_f1']} | "
                     f"{r['trained_float32_f1']} (alone {r['trained_float32_task_only_f1']}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
