"""``bigops ckpt``: checkpoint tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bigops.cli.options import RunDirArg, TagOpt

app = typer.Typer(help="Checkpoint tools: export (and, later, list, inspect, verify, compare-tp, prune).",
                  no_args_is_help=True)


@app.command("export-hf")
def export_hf_command(
    run_dir: RunDirArg,
    out_dir: Annotated[Path, typer.Argument(help="New directory for config.json + safetensors (must not exist).",
                                            show_default=False)],
    tag: TagOpt = None,
    dtype: Annotated[str, typer.Option(help="auto (the training precision), fp32, bf16 or fp16.")] = "auto",
) -> None:
    """Export a checkpoint of any TP/PP/DP layout to a Hugging Face BLOOM directory."""
    from bigops.checkpoint.export_hf import DTYPES, export_hf
    from bigops.errors import ConfigError

    if dtype != "auto" and dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
    result = export_hf(run_dir, out_dir, tag=tag, dtype=dtype)
    typer.echo(f"exported {result.tag} (step {result.step}, {result.num_parameters:,} parameters) "
               f"to {result.out_dir}")
