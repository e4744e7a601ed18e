"""Command-line entry point of dblocks.client."""

import typer

app = typer.Typer(help="Company side: join a federation, check data, keys and the privacy ledger.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """Company side: join a federation, check data, keys and the privacy ledger."""


if __name__ == "__main__":
    app()
