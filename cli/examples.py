"""`aiops example ...`: the kit's example data."""

from __future__ import annotations

from pathlib import Path

import typer

example_app = typer.Typer(
    help="The kit's examples: data for the digits classifier, the byte-level language model and the LoRA "
    "fine-tune, and a tiny Llama model.",
    no_args_is_help=True,
)


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

    summary = write_channels(
        out, train_bytes=train_bytes, test_bytes=test_bytes, shard_tokens=shard_tokens, seed=seed
    )
    for name, info in summary.items():
        typer.echo(
            f"{name}: {info['tokens']} tokens in {info['shards']} shard(s) from {info['documents']} "
            f"files -> {info['path']}"
        )


@example_app.command("finetune-data")
def finetune_data(
    out: Path = typer.Argument(..., help="Folder to write the train/ and test/ channels into."),
    test_fraction: float = typer.Option(
        0.1, min=0.01, max=0.5, help="Share of conversations held out for test."
    ),
    max_samples: int | None = typer.Option(None, min=2, help="Keep at most this many conversations in all."),
    seed: int = typer.Option(0, help="Seed of the order, the split and the question phrasings."),
) -> None:
    """Write an instruction dataset made from the Python standard library's docstrings (no download) as
    train and test channels: data.jsonl, one {"messages": [user, assistant]} conversation a line."""
    from aiops.training.examples.finetune.prepare import write_channels

    summary = write_channels(out, test_fraction=test_fraction, max_samples=max_samples, seed=seed)
    for name, info in summary.items():
        typer.echo(f"{name}: {info['samples']} conversations -> {info['path']}")


@example_app.command("tiny-llm")
def tiny_llm(
    out: Path = typer.Argument(..., help="New folder to write the Hugging Face model folder into."),
    layers: int = typer.Option(2, help="Decoder layers (num_hidden_layers)."),
    hidden: int = typer.Option(64, help="Hidden size (hidden_size)."),
    heads: int = typer.Option(4, help="Attention heads (num_attention_heads)."),
    kv_heads: int = typer.Option(2, help="Key/value heads (num_key_value_heads; grouped-query attention)."),
    intermediate: int = typer.Option(128, help="MLP size (intermediate_size)."),
    vocab: int = typer.Option(512, help="BPE vocabulary, special tokens included."),
    max_positions: int = typer.Option(512, help="Longest sequence (max_position_embeddings)."),
    dtype: str = typer.Option("float32", help="Weights as float32 or bfloat16."),
    seed: int = typer.Option(
        0, help="Seed of the random weights: the same seed and sizes, the same weights."
    ),
) -> None:
    """Write a small Llama-architecture causal LM with random weights, a tokenizer trained here on the
    Python standard library and a chat template: a Hugging Face model folder, made offline. The
    defaults make ~140k parameters; --layers 12 --hidden 768 --heads 12 --kv-heads 4 --intermediate
    2048 --vocab 16384 makes ~100M."""
    from aiops.extras import check_extra

    check_extra("finetune", "aiops example tiny-llm", "transformers", "tokenizers", "safetensors")
    from aiops.training.examples.finetune.tiny_llm import TinyLlmSize, write_model

    size = TinyLlmSize(
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        vocab=vocab,
        max_positions=max_positions,
    )
    size.check()
    _quiet_transformers()
    summary = write_model(out, size, seed=seed, dtype=dtype)
    typer.echo(
        f"{summary['parameters']:,} parameters, vocabulary {summary['vocab']}, {summary['dtype']}, "
        f"seed {summary['seed']} -> {summary['path']} ({', '.join(summary['files'])})"
    )


def _quiet_transformers() -> None:
    """No progress bars or advice from transformers on a command's output."""
    import os

    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def register(app: typer.Typer, *, panel: str) -> None:
    app.add_typer(example_app, name="example", rich_help_panel=panel)
