"""``csft diff ...`` and ``csft merge``: the diff store's command line.

Every failure prints one line on stderr and exits non-zero with one of the ``EXIT_*`` codes
below (a refused diff, bad usage or unreadable input, the service or Redis unreachable), so
scripts can branch on it; the other command lines exit with the same codes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NoReturn, Optional

import typer

from diffs_store import errors

diff_app = typer.Typer(help="Inspect, validate and import sparse diff files.", no_args_is_help=True)

EXIT_REFUSED = 1  # the input was read and refused (an invalid diff, a refused push)
EXIT_USAGE = 2  # bad usage or unreadable input
EXIT_UNREACHABLE = 3  # the service or Redis cannot be reached


def fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    """One line on stderr, then exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", EXIT_USAGE)


def _load_base(name: str):
    from diffs_store.base import load_base_model

    # huggingface_hub logs a warning line per download retry; our one error line says it all.
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        return load_base_model(name)
    except (OSError, ValueError) as exc:
        fail(f"cannot load base model {name!r}: {str(exc).splitlines()[0]}", EXIT_USAGE)
    finally:
        hub_log.setLevel(level)


@diff_app.command("inspect")
def inspect_cmd(file: Path) -> None:
    """Print a diff's metadata (plus its id and size) as JSON."""
    from diffs_store.format import diff_id, read_metadata

    data = _read(file)
    try:
        meta = read_metadata(data)
    except errors.DiffError as exc:
        fail(str(exc))
    out = {"id": diff_id(data), "size": len(data), **meta.model_dump(mode="json")}
    typer.echo(json.dumps(out, indent=2))


@diff_app.command("validate")
def validate_cmd(
    file: Path,
    base: str = typer.Option(..., "--base", help="Base model: Hugging Face name or local directory."),
    max_bytes: Optional[int] = typer.Option(
        None, help="Refuse files above this size (default: the format's cap, format.DEFAULT_MAX_FILE_BYTES)."
    ),
) -> None:
    """Exit 0 when FILE is a valid diff for BASE; otherwise one line naming the problem."""
    from diffs_store.format import DEFAULT_MAX_FILE_BYTES
    from diffs_store.validate import validate_diff_bytes

    data = _read(file)
    _, spec = _load_base(base)
    try:
        diff = validate_diff_bytes(data, spec, max_bytes=DEFAULT_MAX_FILE_BYTES if max_bytes is None else max_bytes)
    except errors.DiffError as exc:
        fail(str(exc))
    typer.echo(f"ok: {diff.meta.kind.value} diff {diff.meta.key!r}, {diff.nnz} entries, valid for {base}")


@diff_app.command("import-csft")
def import_cmd(
    src: str = typer.Argument(
        ..., help="A composable-sft pytorch_diff.bin, its directory, or a model-hub name "
        "(cambridgeltl/xlmr-lang-sft-sw-small; uses the Hugging Face cache, honours HF_HUB_OFFLINE)."
    ),
    base: str = typer.Option(..., "--base"),
    kind: str = typer.Option(..., "--kind", help="language or task"),
    language: Optional[str] = typer.Option(None, "--language"),
    task: Optional[str] = typer.Option(None, "--task"),
    task_type: Optional[str] = typer.Option(None, "--task-type"),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated label names, in id order."),
    out: Path = typer.Option(..., "-o", "--output"),
) -> None:
    """Convert a reference (composable-sft) SFT into our format, values unchanged."""
    from diffs_store.metadata import DiffKind, TaskType
    from diffs_store.reference_import import fetch_reference, import_reference

    try:
        kind_v = DiffKind(kind)
        task_type_v = TaskType(task_type) if task_type else None
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        src_path = fetch_reference(src)
    except FileNotFoundError as exc:
        fail(str(exc), EXIT_USAGE)
    data = _read(src_path)
    _, spec = _load_base(base)
    try:
        diff = import_reference(
            data, spec, kind=kind_v, language=language, task=task, task_type=task_type_v,
            labels=tuple(labels.split(",")) if labels else (),
        )
    except errors.DiffError as exc:
        fail(str(exc))
    diff_id = diff.save(out)
    typer.echo(f"wrote {out} ({diff.nnz} entries, id {diff_id})")


def push_diff(path: Path, url: str, token: Optional[str]) -> dict:
    """POST a diff file to a running service's admin API (multipart ``file``, bearer token).

    The service validates it against its loaded base before storing and publishing it, so
    a refused push changes nothing there.
    """
    import httpx

    if not token:
        fail("pushing needs --token (or CSFT_ADMIN_TOKEN)", EXIT_USAGE)
    data = _read(path)
    try:
        resp = httpx.post(
            url.rstrip("/") + "/v1/admin/diffs",
            files={"file": (path.name, data, "application/octet-stream")},
            headers={"Authorization": f"Bearer {token}"},
            timeout=600,
        )
    except httpx.HTTPError as exc:
        fail(f"push to {url} failed: {exc}", EXIT_UNREACHABLE)
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        fail(f"push refused ({resp.status_code}): {str(detail).splitlines()[0] if detail else ''}")
    body = resp.json()
    typer.echo(f"pushed {path} to {url}: {body.get('kind')} {body.get('key')!r} version {body.get('version')}, id {body.get('id')}")
    return body


@diff_app.command("push")
def push_cmd(
    file: Path,
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="The running service."),
    token: Optional[str] = typer.Option(None, "--token", envvar="CSFT_ADMIN_TOKEN", help="Admin bearer token."),
) -> None:
    """Upload a diff to a running service; it serves it from the next request on."""
    push_diff(file, url, token)


def merge_cmd(
    base: str = typer.Option(..., "--base", help="Base model: Hugging Face name or local directory."),
    language_diff: Optional[Path] = typer.Option(None, "--language-diff"),
    task_diff: Optional[Path] = typer.Option(None, "--task-diff"),
    out: Path = typer.Option(..., "-o", "--output", help="Output directory (a Hugging Face model)."),
) -> None:
    """Bake a language and/or task diff into a plain Hugging Face model directory."""
    from diffs_store.format import parse_diff
    from diffs_store.merge import merge_to_directory

    paths = [p for p in (language_diff, task_diff) if p is not None]
    if not paths:
        fail("give --language-diff and/or --task-diff", EXIT_USAGE)
    try:
        diffs = [parse_diff(_read(p)) for p in paths]
        for p, d, want in zip(paths, diffs, ["language", "task"] if language_diff else ["task"]):
            if d.meta.kind.value != want:
                fail(f"{p} is a {d.meta.kind.value} diff, given as --{want}-diff", EXIT_USAGE)
        model = merge_to_directory(base, diffs, out)
    except errors.DiffError as exc:
        fail(str(exc))
    except (OSError, ValueError) as exc:
        fail(str(exc).splitlines()[0], EXIT_USAGE)
    typer.echo(f"wrote {type(model).__name__} to {out}")
