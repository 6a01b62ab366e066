"""`python -m reasondiff.convert SRC OUT [--to reasondiff|dictionary_learning|kissane] [--scaling-factors a,b]`

Converts a crosscoder between reasondiff's format and the files the field's tools load: the
science-of-finetuning dictionary_learning fork (`model.safetensors` + `config.json`, loadable by its
`CrossCoder`/`BatchTopKCrossCoder.from_pretrained(OUT, from_hub=True)`) and Kissane & Nanda's replication
(`cfg.json` + `cc_weights.safetensors`, strict-loadable by his `CrossCoder`). SRC's format is detected
from its files. The maths and the format details are in reasondiff/crosscoder/convert.py.

    python -m reasondiff.convert outputs/qwen05b/train exported/ --to dictionary_learning
    python -m reasondiff.convert path/to/fork_crosscoder imported/          # then analyze.crosscoder_dir=imported
    python -m reasondiff.convert kissane_ckpt/ imported/ --scaling-factors 0.276,0.244
"""

from __future__ import annotations

import argparse
import logging
import sys


def parse_factors(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scaling-factors: expected numbers like 0.75,0.22, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reasondiff.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="crosscoder directory (or weights file: fork .pt, Kissane <v>.pt)")
    parser.add_argument("out", help="directory to write (created; an existing non-empty one needs --overwrite)")
    parser.add_argument("--to", default="reasondiff", choices=("reasondiff", "dictionary_learning", "kissane"),
                        help="target format (default: reasondiff, i.e. import)")
    parser.add_argument("--scaling-factors", type=parse_factors, default=None, metavar="BASE,TUNED",
                        help="per-model norm scaling factors, base first, for checkpoints that do not store them "
                             "(Kissane's; fork crosscoders trained without a normaliser)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from reasondiff.core.errors import UserError
    from reasondiff.crosscoder.convert import convert

    try:
        out = convert(args.src, args.out, to=args.to, scaling_factors=args.scaling_factors, overwrite=args.overwrite)
    except UserError as err:
        text = str(err).strip()
        print(f"error: {text.splitlines()[0] if text else type(err).__name__}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
