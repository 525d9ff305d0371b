"""The YAML configs that ship inside the package (btcxr/configs/), and what a `--config` value names.

A value is a path or a packaged name: `pretrain/paper`, `experiments/synthetic.yaml`, or a bare `paper` that
the command's kind completes (`btcxr pretrain --config paper` is `pretrain/paper`).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from btcxr.errors import BtcxrError, did_you_mean

# A real folder in a clone and in an installed wheel alike: pip unpacks a wheel onto the disk (it is never
# imported from a zip), so this is a plain directory, and `../pretrain/demo.yaml` inside an experiment file
# opens as a file next to it.
CONFIG_DIR = Path(str(files("btcxr") / "configs"))

# The sub-folders of CONFIG_DIR, one per command family; `experiments` holds what `btcxr reproduce` runs.
KINDS = ("experiments", "pretrain", "finetune", "probe")

SUFFIX = ".yaml"


def packaged_configs() -> dict[str, str]:
    """Every packaged config, `kind/name` -> its description (the comment on its first line), in KINDS order."""
    found = {}
    for kind in KINDS:
        for path in sorted((CONFIG_DIR / kind).glob(f"*{SUFFIX}")):
            found[f"{kind}/{path.stem}"] = description(path)
    return found


def description(path: Path) -> str:
    """The file's opening `# ...` line without the `#`, or "" when it does not open with a comment."""
    with path.open(encoding="utf-8") as handle:
        first = handle.readline().strip()
    return first.lstrip("#").strip() if first.startswith("#") else ""


def packaged_config(name: str, kind: str | None = None) -> Path:
    """The packaged file `name` stands for: `kind/name` or a bare `name` under `kind`, `.yaml` optional.

    A bare name without a kind must be unique over all kinds (`demo` is not: say `pretrain/demo`).
    """
    return _packaged(name, kind, looked_in=None)


def resolve_config(value: str | Path, kind: str | None = None, base: str | Path | None = None) -> Path:
    """The YAML file a `--config` value (or a stage config inside an experiment file) means.

    In this order: an existing file (absolute, or relative to the working directory); a file relative to
    `base` (the folder of the experiment file that names it, so `../pretrain/demo.yaml` works in a clone
    and in an installed package); a packaged name (see `packaged_config`; `../kind/name.yaml` counts as
    `kind/name`). Otherwise an error naming the value, where it was looked for, and the known names (those
    of `kind` first).
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if base is not None and not path.is_absolute() and (Path(base) / path).is_file():
        return Path(base) / path
    looked_in = "" if path.is_absolute() else " (looked in .)" if base is None else f" (looked in . and {base})"
    return _packaged(str(value), kind, looked_in)


def _packaged(name: str, kind: str | None, looked_in: str | None) -> Path:
    """`packaged_config`; `looked_in` (None: no file was looked for) says where `resolve_config` looked."""
    known = packaged_configs()
    # `../pretrain/demo.yaml` is how experiment files name a stage config; in a copy of one made with
    # `btcxr configs show` (no packaged folder next to it) it still means the packaged file.
    stem = name.removesuffix(SUFFIX).removeprefix("../")
    if "/" in stem:
        candidates = [stem] if stem in known else []
    elif kind is not None:
        candidates = [f"{kind}/{stem}"] if f"{kind}/{stem}" in known else []
    else:
        candidates = [n for n in known if n.split("/", 1)[1] == stem]
    if len(candidates) == 1:
        return CONFIG_DIR / f"{candidates[0]}{SUFFIX}"
    # The same opening as load_config's "config file ... does not exist" when a file was looked for.
    what = f"config {name!r}:" if looked_in is None else f"config file {name} does not exist{looked_in}, and"
    if candidates:
        raise BtcxrError(f"{what} as a name it is ambiguous: it could be {', '.join(candidates[:-1])} or "
                         f"{candidates[-1]}; give one of them")
    named_kind = stem.split("/", 1)[0] if stem.split("/", 1)[0] in KINDS else kind
    names = [n if "/" in stem or named_kind is None else n.split("/", 1)[1] for n in known
             if named_kind is None or n.split("/", 1)[0] == named_kind]
    hint = did_you_mean(stem, names).strip()
    raise BtcxrError(f"{what} it is not a packaged config name{' ' + hint if hint else ''}. "
                     f"{_known_names(known, named_kind)}")


def _known_names(known: dict[str, str], kind: str | None) -> str:
    """`Known ...: ...`, the names of `kind` first, so the likely fix is read first."""
    mine = [n for n in known if n.split("/", 1)[0] == kind]
    others = [n for n in known if n not in mine]
    listing = "`btcxr configs` lists them with their descriptions"
    if mine:
        return f"Known {kind} configs: {', '.join(mine)}; others: {', '.join(others)} ({listing})."
    return f"Known configs: {', '.join(others)} ({listing})."
