"""The ``csft`` command: one typer application assembled from each package's commands."""

from __future__ import annotations

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
