"""Command-line entry point of dblocks.server."""

import typer

app = typer.Typer(help="Operator side: registry, SuperLink and the federation server.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """Operator side: registry, SuperLink and the federation server."""


from .registry.cli import registry_command, tokens_app  # noqa: E402

app.command("registry")(registry_command)
app.add_typer(tokens_app, name="tokens")


if __name__ == "__main__":
    app()
