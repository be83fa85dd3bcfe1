"""`aiops example ...`: the kit's example data."""

from __future__ import annotations

from pathlib import Path

import typer

example_app = typer.Typer(help="The kit's examples: data for the digits classifier and the byte-level language model.", no_args_is_help=True)


@example_app.command("digits-data")
def digits_data(
    out: Path = typer.Argument(..., help="Folder to write the train/ and test/ channels into."),
    test_fraction: float = typer.Option(0.2, min=0.05, max=0.5, help="Share of samples held out for test."),
    seed: int = typer.Option(0, help="Seed of the stratified split."),
) -> None:
    """Write the 8x8 handwritten digits (shipped with scikit-learn) as train and test channels."""
    from aiops.training.examples.digits.prepare import write_channels

    summary = write_channels(out, test_fraction=test_fraction, seed=seed)
    for name, info in summary.items():
        typer.echo(f"{name}: {info['samples']} samples -> {info['path']}")


@example_app.command("lm-data")
def lm_data(
    out: Path = typer.Argument(..., help="Folder to write the train/ and test/ channels into."),
    train_bytes: int = typer.Option(4_000_000, min=1, help="Train channel size in tokens (bytes of source)."),
    test_bytes: int = typer.Option(200_000, min=1, help="Test channel size in tokens."),
    shard_tokens: int = typer.Option(1 << 20, min=1, help="Tokens per .bin shard (the last may be shorter)."),
    seed: int = typer.Option(0, help="Seed of the file selection."),
) -> None:
    """Write byte-level token shards of this Python's standard library source as train and test channels."""
    from aiops.training.examples.lm.prepare import write_channels

    summary = write_channels(out, train_bytes=train_bytes, test_bytes=test_bytes, shard_tokens=shard_tokens,
                             seed=seed)
    for name, info in summary.items():
        typer.echo(f"{name}: {info['tokens']} tokens in {info['shards']} shard(s) from {info['documents']} "
                   f"files -> {info['path']}")


def register(app: typer.Typer, *, panel: str) -> None:
    app.add_typer(example_app, name="example", rich_help_panel=panel)
