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
) -> None:
    """Start the HTTP server (uvicorn). Configuration: CSFT_* environment variables, REDIS_URL."""
    import logging

    import uvicorn

    from service.app import create_app
    from service.config import Settings

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(**({"base_model": base_model} if base_model else {}))
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)


def main() -> None:
    app()
