"""The ``mu2`` command: info, new-checkpoint, draft, export, demo.

User errors print one line starting with ``mu2:`` on stderr and exit with status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from engine.errors import Mu2Error

log = logging.getLogger("mu2")


def _add_new_checkpoint(sub) -> None:
    p = sub.add_parser("new-checkpoint", help="write a loadable checkpoint folder (random init where no weights are given)")
    p.add_argument("--preset", choices=["tiny", "demo", "mu2-1b"], required=True)
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--vision", help="M3D-CLIP ViT weights (pretrained_ViT.bin or .safetensors)")
    p.add_argument("--llm", help="local Hugging Face folder of the decoder (Llama-3.2-1B-Instruct, Qwen3, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_new_checkpoint)


def _run_new_checkpoint(args) -> int:
    from engine.assemble import new_checkpoint

    out = new_checkpoint(args.preset, args.out, vision=args.vision, llm=args.llm, seed=args.seed)
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mu2", description="Mu2: CT report drafts with the μ²Tokenizer model")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    from engine.cli_info import add_info_parser

    add_info_parser(sub)
    _add_new_checkpoint(sub)
    try:
        from engine.cli_draft import add_draft_parser, add_export_parser

        add_draft_parser(sub)
        add_export_parser(sub)
    except ImportError:  # pragma: no cover - during bootstrapping only
        pass
    demo = sub.add_parser("demo", help="open napari with the Mu2 widget, the demo model and a sample CT")
    demo.add_argument("path", nargs="?", help="a CT to open instead of the synthetic sample")
    demo.set_defaults(func=_run_demo)
    return parser


def _run_demo(args) -> int:
    from mu2_napari.launch import launch

    return launch(args.path)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="mu2: %(message)s")
    try:
        return int(args.func(args) or 0)
    except Mu2Error as err:
        print(f"mu2: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mu2: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
