"""Rebuild the tiny base model shipped with the package (reasondiff/tiny/base_model/) from
`TinyRecipe()`: `python -m reasondiff.tiny.build` (`make tiny-base`). Run it after changing the
recipe or the text generator (and bump `TinyRecipe.version`); about 20 minutes on a 2-core CPU.
`--set field=value` builds another recipe elsewhere (`--out`), to try one."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from reasondiff.tiny.model import SHIPPED_BASE, TinyRecipe, build_base_model, write_recipe_datasets


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=SHIPPED_BASE, help="where to write the model")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a TinyRecipe field (JSON value), e.g. --set chat_share=0.2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    fields = {f.name for f in dataclasses.fields(TinyRecipe)}
    changes = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in fields:
            parser.error(f"--set {item}: TinyRecipe has no field {name!r} (fields: {', '.join(sorted(fields))})")
        try:
            changes[name] = json.loads(value)
        except json.JSONDecodeError:
            parser.error(f"--set {item}: the value must be JSON (a number, null, true/false)")
    recipe = TinyRecipe(**changes)
    if args.threads:
        torch.set_num_threads(args.threads)
    build = recipe.record()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        write_recipe_datasets(Path(scratch), recipe)
        build_base_model(args.out, Path(scratch), recipe, build)
    logging.info("tiny base model built in %.0f s: %s", time.perf_counter() - start, args.out)
    return args.out


if __name__ == "__main__":
    main()
