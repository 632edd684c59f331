"""The ``csft`` command: one typer application assembled from each package's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from diffs_store.cli import diff_app, merge_cmd
from trainer.cli import eval_cmd, train_app

app = typer.Typer(help="Composable sparse fine-tunings: diffs, merge, serving.", no_args_is_help=True)
app.add_typer(diff_app, name="diff")
app.add_typer(train_app, name="train")
app.command("eval")(eval_cmd)


@app.callback()
def _setup() -> None:
    from diffs_store.base import quiet_transformers

    quiet_transformers()


app.command("merge")(merge_cmd)

data_app = typer.Typer(help="Public data sets in the layout the trainer reads.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("masakhaner")
def data_masakhaner(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (ner/, text/)."),
    languages: str = typer.Option("hau,swa,yor,pcm", "--languages", help="Target languages (comma-separated)."),
    source: Optional[str] = typer.Option(
        None, "--from", help="A local directory (a clone of masakhane-io/masakhane-ner, or a folder in this layout) "
        "instead of the public GitHub source: for offline machines.",
    ),
) -> None:
    """Fetch MasakhaNER (English source + target NER) and the targets' raw text from the
    public masakhane-io/masakhane-ner repository, or read them from a local directory."""
    from diffs_store.cli import EXIT_UNREACHABLE, EXIT_USAGE, fail
    from trainer.masakhaner_data import REPO_RAW, fetch

    try:
        fetch(out, [x.strip() for x in languages.split(",") if x.strip()], source or REPO_RAW, log=typer.echo)
    except FileNotFoundError as exc:
        fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        fail(f"cannot read {source or REPO_RAW} ({exc}); offline, pass --from DIR", EXIT_UNREACHABLE)
    typer.echo(f"wrote {out}")


registry_app = typer.Typer(help="The Redis registry of diffs.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("rebuild")
def registry_rebuild(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Overrides CSFT_DATA_DIR (the blob store)."),
    redis_url: Optional[str] = typer.Option(None, "--redis-url", help="Overrides REDIS_URL."),
) -> None:
    """Re-index every diff in the blob store that Redis does not know (after Redis lost its
    data), from each diff's own metadata; versions follow creation order. Safe to repeat."""
    from diffs_store.cli import EXIT_UNREACHABLE, fail
    from diffs_store.rebuild import rebuild
    from service.app import open_registry
    from service.config import Settings
    from service.engine import REGISTRY_DOWN

    overrides = {k: v for k, v in (("data_dir", data_dir), ("redis_url", redis_url)) if v is not None}
    settings = Settings(**overrides)
    try:
        report = rebuild(open_registry(settings))
    except REGISTRY_DOWN as exc:
        fail(f"the registry is unreachable: {str(exc).splitlines()[0]}", EXIT_UNREACHABLE)
    typer.echo(f"rebuilt the registry from {settings.data_dir / 'blobs'}: {report.summary()}")


@app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    log_level: str = typer.Option("info", "--log-level"),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Overrides CSFT_BASE_MODEL."),
    replicas: int = typer.Option(1, "--replicas", min=1, help="Model replicas; 2 or more runs the Ray Serve application."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join this Ray cluster (default: start a local one)."),
    min_replicas: Optional[int] = typer.Option(None, "--min-replicas", min=0, help="Autoscaling lower bound (with --max-replicas)."),
    max_replicas: Optional[int] = typer.Option(None, "--max-replicas", min=1, help="Autoscale between the bounds, starting at --replicas."),
    target_ongoing_requests: float = typer.Option(4.0, "--target-ongoing-requests", help="Autoscaling target per model replica."),
    replica_cpus: float = typer.Option(1.0, "--replica-cpus", help="CPUs per model replica (also its torch threads)."),
    replica_gpus: float = typer.Option(0.0, "--replica-gpus", help="GPUs per model replica."),
    no_demo: bool = typer.Option(False, "--no-demo", help="Install no demo diffs and retire earlier ones (CSFT_DEMO=false)."),
) -> None:
    """Start the HTTP server. One replica: this process (uvicorn). Two or more (or
    --max-replicas, or --ray-address): the Ray Serve application with pair-affinity
    routing. Configuration: CSFT_* environment variables, REDIS_URL."""
    import logging

    from service.config import Settings

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {"base_model": base_model} if base_model else {}
    if no_demo:
        overrides["demo"] = False
    settings = Settings(**overrides)
    if replicas == 1 and max_replicas is None and ray_address is None:
        import uvicorn

        from service.app import create_app
        from service.connection_guard import uvicorn_config

        server = uvicorn.Server(uvicorn_config(create_app(settings), settings, host=host, port=port, log_level=log_level))
        try:
            server.run()
        except KeyboardInterrupt:  # a second Ctrl-C during shutdown
            pass
        if not server.started:
            raise typer.Exit(3)  # as uvicorn.run: the application failed to start
        return
    from diffs_store.cli import EXIT_USAGE, fail

    try:
        from service.scaleout.launch import run
        from service.scaleout.options import ScaleOutOptions
    except ImportError as exc:
        fail(f"--replicas needs Ray Serve ({exc.name} is missing): pip install 'composable-sft-serving[ray]'", EXIT_USAGE)
    try:
        options = ScaleOutOptions(
            replicas=replicas, min_replicas=min_replicas, max_replicas=max_replicas,
            target_ongoing_requests=target_ongoing_requests, replica_cpus=replica_cpus, replica_gpus=replica_gpus,
        )
    except ValueError as exc:
        fail(f"bad scaling options: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}", EXIT_USAGE)
    run(settings, options, host, port, ray_address)


def main() -> None:
    app()
