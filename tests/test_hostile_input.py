"""Hostile and careless input, driven through the CLI (issue 24): each case ends in a short, clear error
and nothing runs."""

import pytest

from btcxr.cli import main

# 9 levels of 9 aliases: about a billion values once expanded, from 300 bytes of text.
BOMB = "[" + ", ".join(["&a0 [x, x, x, x, x, x, x, x, x]"] + [
    f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]) + ", *a8]"


def _refused(capsys, argv) -> str:
    """Run the CLI; it must exit with the user-error code and a short message, and return that message."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err) < 2000
    return err


@pytest.mark.parametrize("override, words", [
    ("optim.lr=[1,", "is not valid YAML"),
    ("optim.lr=!!python/object/apply:os.system ['touch OWNED']", "is not valid YAML"),
    (f"optim.lr={BOMB}", "aliases expand to"),
    ("optim.lr=" + "[" * 5000 + "]" * 5000, "nested too deeply"),
    ("optim.epochs=" + "x" * 100_000, "must be int"),
])
def test_a_hostile_override_is_refused_before_anything_runs(override, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _refused(capsys, ["pretrain", "--config", "pretrain/demo", "--out", str(tmp_path / "run"), override])
    assert words in err and "optim." in err
    assert not (tmp_path / "OWNED").exists() and not (tmp_path / "run").exists()


def test_an_alias_bomb_in_a_config_file_is_refused(tmp_path, capsys):
    config = tmp_path / "bomb.yaml"
    config.write_text(f"optim:\n  lr: {BOMB}\n")
    err = _refused(capsys, ["pretrain", "--config", str(config), "--out", str(tmp_path / "run")])
    sizes = [10]                                  # a0: a list of 9 scalars
    for _ in range(8):
        sizes.append(1 + 9 * sizes[-1])           # a1..a8: a list of 9 aliases of the level below
    values = 4 + 1 + sum(sizes) + sizes[-1]       # {optim: {lr: [a0, ..., a8, *a8]}}
    assert f"aliases expand to {values:,} values" in err and str(config) in err


def test_a_config_file_that_is_not_text_is_refused(tmp_path, capsys):
    config = tmp_path / "binary.yaml"
    config.write_bytes(b"\xff\xfe\x00\x01")
    assert "cannot be read as UTF-8 text" in _refused(capsys, ["pretrain", "--config", str(config),
                                                                "--out", str(tmp_path / "run")])


@pytest.mark.parametrize("flag", ["--partition", "--account", "--qos"])
def test_a_newline_in_a_slurm_option_never_reaches_the_sbatch_script(flag, tmp_path, capsys):
    err = _refused(capsys, ["reproduce", "--config", "demo", "--out", str(tmp_path / "exp"), "--launcher", "slurm",
                            flag, "gpu\ntouch OWNED"])
    assert f"{flag} 'gpu\\ntouch OWNED': a SLURM name has only letters" in err
    assert not (tmp_path / "exp").exists()


# ------------------------------------------------------------------------------ two runs, one folder
def _holder(folder, tmp_path):
    """Another process that locks `folder` as a training run does and keeps it until killed."""
    import subprocess
    import sys
    import time

    ready = tmp_path / "ready"
    code = ("import sys, time; from pathlib import Path; from btcxr.engine.lock import hold; "
            "hold(sys.argv[1]); Path(sys.argv[2]).touch(); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder), str(ready)])
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the holder did not start"
        time.sleep(0.05)
    return proc


def test_a_second_process_on_a_locked_run_folder_is_refused_until_the_holder_dies(tmp_path, capsys):
    """Two `btcxr finetune` on one --out both ran and the second overwrote the first's files (issue 24)."""
    import signal

    from btcxr.engine.lock import hold, release

    out = tmp_path / "run"
    holder = _holder(out, tmp_path)
    try:
        (tmp_path / "cache").mkdir()
        err = _refused(capsys, ["finetune", "--config", "finetune/demo", "--out", str(out), "--cache",
                                str(tmp_path / "cache")])
        assert f"run directory {out} is in use by pid {holder.pid} on " in err
        assert sorted(p.name for p in out.iterdir()) == [".btcxr.lock"]   # nothing of the run was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    hold(out)   # a lock left by a killed process does not block the rerun
    hold(out)   # and this process may take it again (a resume in one process)
    assert str(holder.pid) not in (out / ".btcxr.lock").read_text()
    release(out)
    assert out.is_dir() and not (out / ".btcxr.lock").exists()   # the lock file goes with the lock


# ------------------------------------------------------------------------------ outputs apart from inputs
def _inputs(tmp_path):
    """An input folder with one radiograph that must survive every refused command."""
    import numpy as np
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(data / "keep.png")
    return data


OVERLAPS = {  # command line (data: the input folder) -> how --out relates to which input
    "browse is the cache": (lambda d: ["browse", "--cache", str(d), "--run", str(d / "p.csv"), "--out", str(d)],
                            "--out {d} is --cache {d}"),
    "browse inside the cache": (lambda d: ["browse", "--cache", str(d), "--run", "p.csv", "--out", str(d / "site")],
                                "--out {d}/site lies inside --cache {d}"),
    "predict inside its inputs": (lambda d: ["predict", "--checkpoint", "best.pt", str(d), "--out", str(d / "pred")],
                                  "--out {d}/pred lies inside input {d}"),
    "predict holding its input": (lambda d: ["predict", "--checkpoint", "best.pt", str(d / "keep.png"),
                                             "--out", str(d)], "--out {d} holds input {d}/keep.png"),
    "evaluate holding --pred": (lambda d: ["evaluate", "--pred", str(d / "keep.png"), "--gt", "gt.csv",
                                           "--out", str(d)], "--out {d} holds --pred {d}/keep.png"),
    "explain inside the cache": (lambda d: ["explain", "--checkpoint", "best.pt", "--split", "test", "--cache", str(d),
                                            "--out", str(d / "cam")], "--out {d}/cam lies inside --cache {d}"),
    "prepare inside its root": (lambda d: ["prepare", "folder", "--root", str(d), "--out", str(d / "cache"),
                                           "--size", "16"], "--out {d}/cache lies inside --root {d}"),
    "finetune on its cache": (lambda d: ["finetune", "--config", "finetune/demo", "--out", str(d),
                                         f"data.cache={d}"], "run directory {d} is data.cache {d}"),
    "probe inside its cache": (lambda d: ["probe", "--config", "probe/demo", "--out", str(d / "run"),
                                          f"data.cache={d}"], "run directory {d}/run lies inside data.cache {d}"),
}


@pytest.mark.parametrize("case", list(OVERLAPS))
def test_an_output_folder_overlapping_an_input_is_refused_and_the_input_kept(case, tmp_path, capsys, monkeypatch):
    """`browse --out <the cache>` deleted a cached image; `predict --out <its input folder>` read its own
    overlays as radiographs on the next run (issue 24)."""
    monkeypatch.chdir(tmp_path)
    data = _inputs(tmp_path)
    argv, words = OVERLAPS[case]
    err = _refused(capsys, argv(data))
    assert words.format(d=data) in err
    assert sorted(p.name for p in data.iterdir()) == ["keep.png"]   # nothing written or removed there


def test_an_experiment_folder_inside_a_raw_dataset_is_refused(tmp_path, capsys):
    data = _inputs(tmp_path)
    err = _refused(capsys, ["reproduce", "--config", "paper", "--out", str(data / "exp"),
                            f"data.vindr_root={data}", f"data.nih_root={tmp_path / 'nih'}", "imagenet_fallback=random"])
    assert f"experiment folder {data}/exp lies inside data.vindr_root {data}" in err
    assert sorted(p.name for p in data.iterdir()) == ["keep.png"]


# ------------------------------------------------------------------------------ every output folder locked
def test_every_command_refuses_an_output_folder_another_process_writes(tmp_path, capsys, monkeypatch):
    import signal

    monkeypatch.chdir(tmp_path)
    data = _inputs(tmp_path)
    out = tmp_path / "out"
    holder = _holder(out, tmp_path)
    try:
        for argv in (["predict", "--checkpoint", "best.pt", str(data), "--out", str(out)],
                     ["evaluate", "--pred", "p.csv", "--gt", "g.csv", "--out", str(out)],
                     ["explain", "--checkpoint", "best.pt", str(data), "--out", str(out)],
                     ["browse", "--cache", str(data), "--run", "p.csv", "--out", str(out)],
                     ["prepare", "folder", "--root", str(data), "--out", str(out), "--size", "16"],
                     ["synth", "--layout", "vindr-kaggle", "--out", str(out)],
                     ["pretrain", "--config", "pretrain/demo", "--out", str(out), f"data.cache={data}"]):
            err = _refused(capsys, argv)
            assert f"{out} is in use by pid {holder.pid} on " in err, argv[0]
        assert sorted(p.name for p in out.iterdir()) == [".btcxr.lock"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_a_command_that_fails_before_writing_leaves_no_output_folder(tmp_path, capsys):
    out = tmp_path / "new" / "eval"
    err = _refused(capsys, ["evaluate", "--pred", str(tmp_path / "none.csv"), "--gt", str(tmp_path / "gt.csv"),
                            "--out", str(out)])
    assert "not found" in err and not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    _refused(capsys, ["evaluate", "--pred", str(tmp_path / "none.csv"), "--gt", "gt.csv", "--out", str(kept)])
    assert kept.is_dir() and not any(kept.iterdir())   # a folder the user made stays, without a lock file


# ------------------------------------------------------------------------------ paths read from files
def test_a_manifest_row_pointing_outside_the_cache_is_refused(tmp_path, capsys):
    """A crafted manifest.csv got /etc/passwd hard-linked into the browse site, which people share."""
    from test_browse import fake_predictions, make_case_cache

    cache = make_case_cache(tmp_path / "cache", n=3)
    manifest = (cache / "manifest.csv").read_text().splitlines()
    manifest[2] = manifest[2].replace("images/img001.png", "../../../../../../etc/passwd")
    (cache / "manifest.csv").write_text("\n".join(manifest) + "\n")
    pred = fake_predictions(cache, tmp_path / "p.csv", seed=0)
    err = _refused(capsys, ["browse", "--cache", str(cache), "--run", str(pred), "--out", str(tmp_path / "site")])
    assert f"{cache / 'manifest.csv'}, line 3: file '../../../../../../etc/passwd' leads outside {cache}" in err
    assert not any(p.name == "passwd" for p in (tmp_path / "site").rglob("*"))


def test_an_image_id_too_long_for_a_file_name_is_refused(tmp_path, capsys):
    data = _inputs(tmp_path)
    (data / "keep.png").rename(data / ("x" * 242 + ".png"))
    err = _refused(capsys, ["prepare", "folder", "--root", str(data), "--out", str(tmp_path / "cache"),
                            "--size", "16"])
    assert "is too long for a file name (242 bytes; at most 200)" in err


def test_paths_from_files_and_names_from_users_stay_in_their_folder(tmp_path):
    """The helper every reader of a path in a file uses: a value leaving its folder is named."""
    from btcxr.engine.paths import confined
    from btcxr.errors import BtcxrError

    (tmp_path / "cam").mkdir()
    (tmp_path / "cam" / "in.png").write_bytes(b"x")
    (tmp_path / "cam" / "out").symlink_to("/etc")
    assert confined(tmp_path / "cam", "in.png", "boxes.csv, line 2") == (tmp_path / "cam" / "in.png").resolve()
    for value in ("/etc/shadow", "../secret", "a/../../b", "out/passwd", "C:\\x", "..\\x"):
        with pytest.raises(BtcxrError, match=r"boxes.csv, line 2: path .* leads outside"):
            confined(tmp_path / "cam", value, "boxes.csv, line 2")
    # names made into file names: tests/test_browse.py::test_file_names_are_distinct_and_stay_in_their_folder


# ------------------------------------------------------------------------------ names written into pages
HOSTILE = '<img src=x onerror="window.__pwned=1">[x](javascript:window.__pwned=2)|*b*_`c`'


def test_hostile_names_show_verbatim_in_the_report_and_its_markdown_and_never_run(tmp_path):
    """results.md carried experiment names, notes and init names raw: any Markdown renderer ran them."""
    import re

    import markdown
    from test_report import make_results

    from btcxr.report.build import build_report

    results = make_results(tmp_path / "exp", probe=False, curves=False)
    results["init"] = results["init"].replace("btcxr", HOSTILE)
    index = build_report(tmp_path / "report", results, candidate=HOSTILE, notes=[f"note {HOSTILE}"])
    md = (tmp_path / "report" / "results.md").read_text()
    assert "<img" not in md and not re.search(r"(?<!\\)\]\(", md)       # no raw tag, no link
    rendered = markdown.markdown(md, extensions=["tables"])
    page = tmp_path / "report" / "results_md.html"
    page.write_text(f"<!doctype html><meta charset=utf-8><body>{rendered}</body>")
    driver = _chromium_driver()
    try:
        for url in (index.as_uri(), page.as_uri()):
            driver.get(url)
            assert driver.execute_script("return window.__pwned") is None, url
            text = driver.execute_script("return document.body.innerText")
            assert HOSTILE in text, url                         # shown as written
            assert f"note {HOSTILE}" in text, url
            assert not driver.execute_script("return document.querySelector('img[src=x], a[href^=javascript]')")
    finally:
        driver.quit()


def _chromium_driver():
    """Headless Chromium (selenium), or a skip where it is missing (CI installs it and must run this)."""
    import os
    import shutil

    browser, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (browser and driver):
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests: chromium and chromium-driver are missing")
        pytest.skip("Chromium or chromedriver is not installed here (Debian: apt install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_csv_tables_people_open_never_hold_a_formula(tmp_path, capsys):
    """A spreadsheet runs a cell starting with =, +, - or @; btcxr's human-facing CSVs prefix it with '."""
    import pandas as pd

    from btcxr.engine.escape import csv_cell, csv_table

    assert [csv_cell(v) for v in ("=1+1", "+x", "-x", "@x", "\tx", "ok", -1.5, "")] == \
        ["'=1+1", "'+x", "'-x", "'@x", "'\tx", "ok", -1.5, ""]
    gt = pd.DataFrame({"image_id": ['=HYPERLINK("http://evil")', "img1"], "class_id": [3, 3],
                       "x_min": [10.0, 10.0], "y_min": [10.0, 10.0], "x_max": [50.0, 50.0], "y_max": [50.0, 50.0]})
    gt.to_csv(tmp_path / "gt.csv", index=False)
    gt.assign(score=0.9).to_csv(tmp_path / "pred.csv", index=False)
    assert main(["evaluate", "--pred", str(tmp_path / "pred.csv"), "--gt", str(tmp_path / "gt.csv"), "--out",
                 str(tmp_path / "eval"), "--bootstrap", "0", "--counts-at", "0.5", "0.3"]) == 0
    text = (tmp_path / "eval" / "per_image.csv").read_text()
    assert "'=HYPERLINK" in text and "\n=" not in text and ",=" not in text
    frame = csv_table(pd.DataFrame({"=a": ["@b", "c"], "n": [-1, 2]}))
    assert list(frame.columns) == ["'=a", "n"] and frame["'=a"].tolist() == ["'@b", "c"]
    assert frame["n"].tolist() == [-1, 2]                         # numbers are not text: kept
