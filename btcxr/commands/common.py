"""The flags every command spells the same way, and their checks before anything is read or written.

One vocabulary: --cache, --device, --seed, --backbone, --score-thr, --batch-size (images per forward pass),
--on-error, -q/-v (before or after the command name). Old spellings stay as aliases that warn.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from btcxr.errors import BtcxrError, cut, did_you_mean

INIT_NAMES = ("imagenet", "random")
_DEPRECATED = "_deprecated_flags"  # namespace attribute: (old, new) spellings used, told once logging is up


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """-v / -q after the command name too (`btcxr finetune ... -q`); SUPPRESS keeps a value given before it."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1,
                       default=argparse.SUPPRESS, help="debug logging")
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1,
                       default=argparse.SUPPRESS, help="warnings and errors only, no progress bars")


class Deprecated(argparse.Action):
    """An old spelling of a flag: stores into the new flag's dest and is reported as a warning."""

    def __init__(self, option_strings, dest, new: str, constant=None, **kwargs):
        self.new, self.constant = new, constant
        if constant is not None:
            kwargs["nargs"] = 0
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.constant if self.constant is not None else values)
        used = list(getattr(namespace, _DEPRECATED, []))
        setattr(namespace, _DEPRECATED, [*used, (option_string, self.new)])


def deprecated_flags(args: argparse.Namespace) -> list[str]:
    """The warnings for old spellings used on this command line."""
    return [f"{old} is an old spelling: use {new}" for old, new in getattr(args, _DEPRECATED, [])]


def add_training_flags(parser: argparse.ArgumentParser, backbone_help: str) -> None:
    """--cache, --backbone, --init-weights, --device and --seed of the training commands: each sets its
    config key (the same as a key=value override)."""
    parser.add_argument("--cache", metavar="CACHE", help="prepared cache the run reads (sets data.cache)")
    parser.add_argument("--backbone", metavar="{imagenet,random,PATH}", help=f"{backbone_help} (sets model.init)")
    parser.add_argument("--init-weights", metavar="FILE",
                        help="ImageNet weights file for --backbone imagenet on machines without internet "
                             "(sets model.weights_file)")
    parser.add_argument("--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:1 (sets device)")
    parser.add_argument("--seed", type=int, help="run seed (sets seed)")


def training_overrides(args: argparse.Namespace) -> list[str]:
    """The key=value overrides of the command line, then those the training flags stand for."""
    overrides = list(args.overrides)
    for flag, key in (("cache", "data.cache"), ("backbone", "model.init"), ("init_weights", "model.weights_file"),
                      ("device", "device"), ("seed", "seed")):
        value = getattr(args, flag, None)
        if value is not None:  # a path is quoted: a '#' or ': ' in it must not be read as YAML
            overrides.append(f"{key}={json.dumps(value)}")
    return overrides


def check_init(init: str, key: str = "model.init") -> None:
    """`init` is imagenet, random or an existing file; told before any folder is made or data is read."""
    if init in INIT_NAMES or Path(init).expanduser().is_file():
        return
    hint = did_you_mean(init, INIT_NAMES)
    raise BtcxrError(f"{key} {cut(init)!r}: neither {' nor '.join(INIT_NAMES)} nor an existing file{hint}")


def check_cache(cache: str, key: str = "data.cache") -> None:
    """A training run's cache is given and is a folder (its contents are checked where it is read)."""
    if not cache:
        raise BtcxrError(f"{key} is not set: give --cache CACHE (a folder written by `btcxr prepare`)")
    if not Path(cache).expanduser().is_dir():
        raise BtcxrError(f"{key} {cut(cache)!r}: no such folder (make one with `btcxr prepare`)")
