"""`aiops export`: a model to TorchScript or ONNX (optionally dynamic int8), verified before it is written."""

from __future__ import annotations

from pathlib import Path

import typer


def export(
    model: str = typer.Argument(
        ..., help="A model.tar.gz, a model folder, or the name of a local training run."
    ),
    format: str = typer.Option(..., "--format", "-f", help="torchscript or onnx."),
    quantize: str | None = typer.Option(
        None, "--quantize", "-q", help="dynamic-int8: Linear/LSTM/GRU weights to int8 (not convolutions)."
    ),
    sample: Path | None = typer.Option(
        None, "--sample", help="Sample batch (.npy/.npz/.json/.csv) [default: a run's test channel]."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Where to write the new model.tar.gz [default: model-FORMAT[-int8].tar.gz]."
    ),
    max_abs_diff: float | None = typer.Option(
        None, "--max-abs-diff", help="Largest allowed |exported - original| [fp32: 1e-4; int8: not checked]."
    ),
    min_agreement: float | None = typer.Option(
        None, "--min-agreement", help="Smallest allowed top-1 agreement [fp32: 0.999; int8: 0.99]."
    ),
    bench_seconds: float = typer.Option(
        0.3,
        "--bench-seconds",
        min=0.0,
        help="Time spent per latency figure (median of the runs, at least 5).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Export a model to TorchScript or ONNX (optionally dynamic int8); verify it on a sample; write
    model.tar.gz."""
    import json

    from aiops.inference.export.pipeline import ExportFailed, ExportOptions, export_model, validate

    opts = ExportOptions(
        model=model,
        format=format,
        quantize=quantize,
        sample=sample,
        out=out,
        max_abs_diff=max_abs_diff,
        min_agreement=min_agreement,
        timing_seconds=bench_seconds,
    )
    validate(opts)
    if not as_json:
        typer.echo(f"exporting {model} to {format}{' ' + quantize if quantize else ''} ...", err=True)
    try:
        summary = export_model(opts)
    except ExportFailed as failed:
        if as_json:
            typer.echo(json.dumps(failed.summary, indent=2, sort_keys=True))
        else:
            _render(failed.summary)
        raise
    if as_json:
        typer.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        _render(summary)
        typer.echo(f"wrote {summary['out']} (verified)")


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def _render(s: dict) -> None:
    sample = s["sample"]
    agree = s["top1_agreement"]
    tol = s["tolerance"]
    quantized = f", {s['quantized_layers']} quantized layers" if s["quantize"] else ""
    limit = "" if tol["max_abs_diff"] is None else f" (limit {tol['max_abs_diff']:.3g})"
    typer.echo(f"  method      {s['method']} (code: {s['code']}{quantized})")
    typer.echo(f"  sample      {sample['path']} {sample['shape']} {sample['dtype']}")
    typer.echo(f"  max |diff|  {s['max_abs_diff']:.3g}{limit}")
    typer.echo(f"  top-1 agree {'n/a' if agree is None else f'{agree:.4f}'} (min {tol['min_agreement']})")
    if s.get("accuracy"):
        typer.echo(f"  accuracy    {s['accuracy']['before']:.4f} -> {s['accuracy']['after']:.4f}")
    size = s["size_bytes"]
    typer.echo(
        f"  model file  {_fmt_bytes(size['model_file_before'])} -> {_fmt_bytes(size['model_file_after'])}"
    )
    typer.echo(f"  artifact    {_fmt_bytes(size['artifact_before'])} -> {_fmt_bytes(size['artifact_after'])}")
    for label, lat in s["latency_ms"].items():
        typer.echo(
            f"  latency {label.replace('batch_', 'b')}  "
            f"{lat['before_ms']:.3f} ms -> {lat['after_ms']:.3f} ms (median)"
        )


def register(app: typer.Typer, *, panel: str) -> None:
    app.command("export", rich_help_panel=panel)(export)
