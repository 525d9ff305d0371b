"""One CLI vocabulary: the same flag for the same thing in every command, old spellings as warning aliases,
-q anywhere, "did you mean" for mistyped keys, names and inits, inputs checked before an output folder is
made; and every `btcxr ...` command line of the README and docs/ parses, so none can go stale."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from btcxr.cli import build_parser, main, parse

ROOT = Path(__file__).resolve().parents[1]


def _options(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {o for action in sub.choices[command]._actions for o in action.option_strings}


# concept -> the flag, and the commands that take it
VOCABULARY = {
    "--cache": ["pretrain", "probe", "finetune", "evaluate", "explain", "browse"],
    "--device": ["pretrain", "probe", "finetune", "evaluate", "predict", "explain"],
    "--seed": ["pretrain", "probe", "finetune", "evaluate", "synth", "prepare"],
    "--backbone": ["pretrain", "probe", "finetune"],
    "--init-weights": ["pretrain", "probe", "finetune"],
    "--score-thr": ["predict", "explain", "browse"],
    "--on-error": ["prepare", "predict", "evaluate", "explain"],
    "--out": ["synth", "prepare", "pretrain", "probe", "finetune", "evaluate", "predict", "explain", "browse"],
    "-q": ["synth", "prepare", "pretrain", "probe", "finetune", "evaluate", "predict", "explain", "browse",
           "reproduce", "replicate", "demo", "configs"],
}


@pytest.mark.parametrize("flag", list(VOCABULARY))
def test_the_same_flag_names_the_same_thing_in_every_command(flag):
    missing = [c for c in VOCABULARY[flag] if flag not in _options(c)]
    assert not missing, f"{flag} missing in {missing}"


def test_batch_size_means_images_per_forward_pass_wherever_it_is_shown():
    for command in ("predict", "evaluate"):
        assert "--batch-size" in _options(command)
    explain = next(a for a in build_parser()._actions if a.dest == "command").choices["explain"]
    shown = [a for a in explain._actions if "--batch-size" in a.option_strings]
    assert shown and shown[0].help == "==SUPPRESS=="          # explain's old spelling is hidden, not shown


@pytest.mark.parametrize("argv, key, value, old", [
    (["evaluate", "--pred", "p", "--gt", "g", "--out", "o", "--lenient"], "on_error", "skip", "--lenient"),
    (["browse", "--cache", "c", "--run", "r", "--out", "o", "--min-score", "0.2"], "score_thr", 0.2, "--min-score"),
    (["explain", "--checkpoint", "c", "--out", "o", "--batch-size", "4"], "ablation_batch_size", 4, "--batch-size"),
])
def test_old_spellings_still_work_and_warn(argv, key, value, old):
    from btcxr.commands.common import deprecated_flags

    args = parse(argv)
    assert getattr(args, key) == value
    assert any(w.startswith(f"{old} is an old spelling") for w in deprecated_flags(args))
    assert not deprecated_flags(parse([a for a in argv if a != old][: argv.index(old)]))


@pytest.mark.parametrize("argv", [["-q", "configs"], ["configs", "-q"]])
def test_quiet_before_or_after_the_command(argv):
    assert parse(argv).verbosity == -1
    assert parse(["configs"]).verbosity == 0 and parse(["-v", "configs"]).verbosity == 1


@pytest.mark.parametrize("argv, words", [
    (["finetune", "--config", "finetune/demo", "--backbone", "imagnet"], "model.init 'imagnet': neither imagenet "
                                                                           "nor random nor an existing file (did you "
                                                                           "mean imagenet?)"),
    (["finetune", "--config", "finetune/demo", "data.cachee=x"], "unknown config key data.cachee (did you mean "
                                                                  "data.cache?)"),
    (["pretrain", "--config", "paperr"], "not a packaged config name (did you mean paper?)"),
    (["probe", "--config", "probe/demo"], "data.cache is not set: give --cache CACHE"),
    (["predict", "--checkpoint", "c", "i", "--on-error", "skp"], "--on-error skp: expected stop or skip (did you "
                                                                 "mean skip?)"),
])
def test_mistakes_are_told_with_a_suggestion_before_any_output_folder_is_made(argv, words, tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_training_flags_set_their_keys_and_keep_paths_verbatim(tmp_path):
    from btcxr.commands.common import training_overrides
    from btcxr.config import load_config
    from btcxr.detect.config import FinetuneConfig

    odd = str(tmp_path / "cache #1: v2")   # YAML would cut a plain scalar at " #" and ": "
    args = parse(["finetune", "--cache", odd, "--backbone", "random", "--device", "cpu", "--seed", "7",
                  "optim.epochs=2"])
    cfg = load_config(FinetuneConfig, None, training_overrides(args))
    assert (cfg.data.cache, cfg.model.init, cfg.device, cfg.seed, cfg.optim.epochs) == (odd, "random", "cpu", 7, 2)


def test_a_deprecated_spelling_is_logged_as_a_warning(capsys, tmp_path):
    main(["evaluate", "--pred", str(tmp_path / "p.csv"), "--gt", str(tmp_path / "g.csv"), "--out",
          str(tmp_path / "o"), "--lenient"])
    assert "WARNING btcxr: --lenient is an old spelling: use --on-error skip" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the docs
def _doc_command_lines() -> list[tuple[str, str]]:
    """(where, command line) of every `btcxr ...` line in the README's and docs' code blocks."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        fenced, in_code, pending = False, False, ""
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("```"):  # a ```text block is a synopsis, not a command to run
                fenced = not fenced
                in_code, pending = fenced and line.strip() != "```text", ""
                continue
            if not in_code:
                continue
            text = pending + line.split(" #", 1)[0].strip() if pending else line.split(" #", 1)[0].strip()
            if text.endswith("\\"):
                pending = text[:-1] + " "
                continue
            pending = ""
            match = re.search(r"(?:^|[;&|(]\s*|torchrun .*?-m |python -m )btcxr(\s.*)?$", text)
            if match and not text.startswith(("pip ", "from ", "import ", ">>>")):
                found.append((f"{path.relative_to(ROOT)}:{number}", "btcxr" + (match.group(1) or "")))
    return found


DOC_LINES = _doc_command_lines()


def test_the_docs_hold_command_lines_to_check():
    assert len(DOC_LINES) > 40


@pytest.mark.parametrize("where, line", DOC_LINES, ids=[w for w, _ in DOC_LINES])
def test_every_command_line_in_the_docs_parses(where, line):
    argv = shlex.split(line)[1:]
    argv = [a for a in argv if a not in (">", "|")]
    try:
        parse(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `{line}` does not parse (exit {exc.code})")


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


def test_every_link_between_the_docs_resolves():
    bad = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", path.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://")):
                continue
            file = (path.parent / target) if target else path
            if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
                bad.append(f"{path.name}: {target}#{anchor}")
    assert not bad, bad
