"""``bigops data``: datasets in the formats the Megatron world trains on."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from bigops.cli.options import make_app

app = make_app("Datasets: tokenize text or jsonl into a Megatron indexed dataset.")


@app.command("prepare")
def prepare(
    inputs: Annotated[list[Path], typer.Argument(help="Text or .jsonl files, or folders of them.", show_default=False)],
    tokenizer: Annotated[Path, typer.Option(help="A tokenizer.json, or a tokenizer folder (BLOOM's is one).",
                                            show_default=False)],
    output: Annotated[Path, typer.Option(help="Output PREFIX: writes PREFIX.bin and PREFIX.idx "
                                              "(train on it with data.source=PREFIX).", show_default=False)],
    json_key: Annotated[str, typer.Option(help="The field of each .jsonl line that holds the document.")] = "text",
    workers: Annotated[int, typer.Option(min=1, help="Tokenizer processes.")] = 1,
    append_eod: Annotated[bool, typer.Option(help="End each document with the tokenizer's end-of-document "
                                                  "token (as preprocess_data.py --append-eod).")] = True,
) -> None:
    """Tokenize INPUTS into a Megatron indexed dataset (streamed, in worker processes), as Megatron's
    tools/preprocess_data.py does; Megatron's own reader reads the result."""
    from rich.console import Console

    from bigops.cli.progress import progress_reporter
    from bigops.errors import InputError
    from trainer.data.prepare import PrepareError, prepare_dataset

    console = Console(stderr=True, highlight=False)
    with progress_reporter(console, "tokenizing") as report:
        try:
            done = prepare_dataset([str(p) for p in inputs], tokenizer, output, json_key=json_key,
                                   workers=workers, append_eod=append_eod,
                                   on_progress=lambda p: report(f"{p.documents:,} docs, {p.tokens:,} tokens, "
                                                                f"{p.mb_per_s:.1f} MB/s"))
        except PrepareError as exc:
            raise InputError(str(exc)) from None
    typer.echo(f"wrote {output}.bin and {output}.idx: {done.documents:,} documents, {done.tokens:,} tokens "
               f"({done.mb_per_s:.1f} MB/s)", file=sys.stdout)
