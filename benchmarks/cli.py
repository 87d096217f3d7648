"""The command line every benchmark shares: its own options plus ``--json``, then one JSON document or the
benchmark's human report."""

from __future__ import annotations

import argparse
import json
from typing import Callable


def main_of(parser: argparse.ArgumentParser, run: Callable[..., dict], report: Callable[[dict], None],
            argv: list[str] | None) -> dict:
    """Parse ``argv`` (the parser's options are ``run``'s keyword arguments), run, print; return the result."""
    parser.add_argument("--json", action="store_true")
    args = vars(parser.parse_args(argv))
    as_json = args.pop("json")
    result = run(**args)
    if as_json:
        print(json.dumps(result))
    else:
        report(result)
    return result
