"""`btcxr configs`: the YAML configs that ship with btcxr, listed with their descriptions or printed whole."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
List the configs that ship inside btcxr, one per published setting plus the small demo ones, with the
first line of each as its description. Every --config option takes one of these names or a path: a bare
name is completed by the command (`btcxr pretrain --config paper` is pretrain/paper, `btcxr reproduce
--config paper` is experiments/paper). `btcxr configs show NAME` prints a file, to copy and edit.
"""

EPILOG = """\
examples:
  btcxr configs
  btcxr configs show pretrain/paper
  btcxr configs show pretrain/paper > my_pretrain.yaml   # edit it, then:
  btcxr pretrain --config my_pretrain.yaml data.cache=/data/cache/nih224
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("configs", help="list the packaged configs, or print one (configs show NAME)",
                                   usage="btcxr configs [-h] [show NAME]", description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="configs_action", metavar="ACTION", help="none: list them all")
    show = actions.add_parser("show", prog="btcxr configs show", help="print a packaged config verbatim",
                              description="Print a packaged config verbatim, e.g. to copy and edit it.")
    show.add_argument("name", metavar="NAME", help="kind/name as `btcxr configs` lists it, e.g. pretrain/paper")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.configs_action == "show":
        return show(args.name)
    return list_configs()


def list_configs() -> int:
    from btcxr.config_files import CONFIG_DIR, packaged_configs

    configs = packaged_configs()
    width = max(map(len, configs))
    kind = None
    for name, text in configs.items():
        if name.split("/", 1)[0] != kind:   # a blank line between kinds
            if kind is not None:
                print()
            kind = name.split("/", 1)[0]
        print(f"{name:<{width}}  {text}")
    print(f"\n{len(configs)} configs in {CONFIG_DIR}; `btcxr configs show NAME` prints one.")
    return 0


def show(name: str) -> int:
    from btcxr.config_files import packaged_config

    sys.stdout.write(packaged_config(name).read_text(encoding="utf-8"))
    return 0
