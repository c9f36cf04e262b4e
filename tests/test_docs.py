"""The documentation: README within its limits, a page per dataset, generated reference pages
up to date, every relative link resolving, nothing pointing outside the repository, the site
building with ``mkdocs build --strict``, and the plugin examples of docs/internals executed
as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
OUTSIDE = re.compile(r"\.\./shared|shared/reference|\bissues?\s*#?\d+", re.I)


def markdown_files() -> list[Path]:
    """README, CHANGELOG, CONTRIBUTING and every page under docs/."""
    top = [ROOT / n for n in ("README.md", "CHANGELOG.md", "CONTRIBUTING.md")]
    return [p for p in top if p.is_file()] + sorted(DOCS.rglob("*.md"))


def code_blocks(page: Path) -> list[tuple[str, str, str]]:
    """``(language, title, body)`` of every fenced block of ``page`` (title from
    ``title="..."`` after the language, else empty)."""
    out = []
    for lang, rest, body in FENCE.findall(page.read_text()):
        title = re.search(r'title="([^"]*)"', rest)
        out.append((lang, title.group(1) if title else "", body))
    return out


def relative_links(page: Path) -> list[str]:
    """Link targets of ``page`` outside code, without URLs and in-page anchors."""
    text = FENCE.sub("", page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    return [t for t in LINK.findall(text)
            if not re.match(r"^(?:[a-z][a-z0-9+.-]*:|#)", t, re.I)]


# --------------------------------------------------------------------------- pages


def test_the_readme_is_short_and_shows_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md: expected at most 200 lines; found {len(lines)}"
    text = "\n".join(lines)
    assert "make demo" in text and "make test" in text


def test_every_dataset_nf_ingest_lists_has_a_page() -> None:
    from nfstore.readers import reader_names

    missing = [k for k in reader_names() if not (DOCS / "datasets" / f"{k}.md").is_file()]
    assert not missing, f"docs/datasets: expected a page per dataset key; missing {missing}"


def test_the_cli_reference_names_every_command() -> None:
    from nf.main import _register, cli

    _register()
    page = (DOCS / "reference" / "cli.md").read_text()
    missing = [n for n in cli.commands if f"\n## nf {n}\n" not in page]
    assert not missing, f"docs/reference/cli.md: missing {missing}; run `python -m nf.docgen`"


def test_the_generated_reference_pages_are_up_to_date() -> None:
    from nf.docgen import REGENERATE, stale_pages

    stale = stale_pages(DOCS / "reference")
    assert not stale, (f"docs/reference: {', '.join(stale)} differ from what the generator "
                       f"writes; run `{REGENERATE}` and commit the result")


def test_the_generator_escapes_markup_outside_code() -> None:
    from nf.docgen import describe, escape

    assert escape("a <table> of *x* & _y_, `keep <this> *as* is`") == \
        r"a &lt;table&gt; of \*x\* &amp; \_y\_, `keep <this> *as* is`"
    assert escape("one ` tick") == r"one \` tick"
    assert describe({"type": "array", "items": {"type": "number"}, "minItems": 4,
                     "maxItems": 4}) == "array of number, 4 items"
    assert describe({"enum": ["a", 1]}) == 'one of `a`, `1`'


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in markdown_files():
        for target in relative_links(page):
            path = target.split("#", 1)[0]
            if path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_link_checker_sees_links_and_skips_code(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("[a](x.md) ![b](img/y.png#z) [c](https://e.org) [d](#top)\n"
                    "`[e](not.md)`\n```\n[f](no.md)\n```\n")
    assert relative_links(page) == ["x.md", "img/y.png#z"]


def test_nothing_points_outside_the_repository() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    hits = []
    for name in files:
        path = ROOT / name
        if path == Path(__file__).resolve() or not path.is_file():
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary files
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{name}:{n}: {line.strip()[:100]}")
    assert not hits, "references outside the repository or to issue numbers:\n" + "\n".join(
        hits)
    assert OUTSIDE.search("see Issue #12") and OUTSIDE.search("issue 7")
    assert OUTSIDE.search("../shared/DESIGN.md") and not OUTSIDE.search("tissue 3 mm")


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    r = subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "-q", "-d",
                        str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "getting-started" / "index.html").is_file()
    api = (tmp_path / "site" / "reference" / "python" / "index.html").read_text()
    assert "nfstore.Store" in api and "betas" in api  # mkdocstrings rendered the API


# --------------------------------------------------------------------------- plugin examples


def _plugin(page: Path, tmp: Path) -> tuple[Path, list[str]]:
    """Build the plugin package of ``page`` as its readers would: its ``python title="<file>.py"``
    blocks and its ``toml title="pyproject.toml"`` block in a folder, a wheel built from it
    with pip, and the wheel unpacked into ``tmp/site`` (what ``pip install`` does). Returns
    the package folder and the commands of its ``bash title="try it"`` block."""
    pkg, site, wheels = tmp / "pkg", tmp / "site", tmp / "wheels"
    pkg.mkdir()
    commands: list[str] = []
    for lang, title, body in code_blocks(page):
        if (lang == "python" and title.endswith(".py")) or (lang, title) == ("toml",
                                                                              "pyproject.toml"):
            (pkg / title).write_text(body)
        elif lang == "bash" and title == "try it":
            commands += [ln for ln in body.splitlines() if ln.strip()]
    assert commands and (pkg / "pyproject.toml").is_file(), f"{page}: example blocks not found"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "-w", str(wheels), str(pkg)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    groups = tomllib.loads((pkg / "pyproject.toml").read_text())["project"]["entry-points"]
    (eps,) = site.glob("*.dist-info/entry_points.txt")
    assert all(f"[{g}]" in eps.read_text() for g in groups), eps.read_text()
    return pkg, commands


def _run(commands: list[str], cwd: Path, site: Path) -> dict[str, str]:
    """Run each ``nf ...`` command in ``cwd`` with the plugin importable; outputs by command."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = {}
    for line in commands:
        args = shlex.split(line)
        assert args[0] == "nf", line
        r = subprocess.run([str(BIN / "nf"), *args[1:]], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, f"{line}\n{r.stdout}{r.stderr}"
        out[line] = r.stdout
    return out


def test_the_reader_example_runs_as_written(tmp_path: Path) -> None:
    import pandas as pd

    pkg, commands = _plugin(DOCS / "internals" / "adding-a-dataset.md", tmp_path)
    site = tmp_path / "site"
    out = _run(commands, tmp_path, site)
    assert any("valid" in o for k, o in out.items() if k.startswith("nf validate"))
    raw = tmp_path / "raw"
    betas = np.load(raw / "sub-01" / "betas.npy")
    events = pd.read_csv(raw / "sub-01" / "events.tsv", sep="\t", dtype={"image": str})
    train = ~events["image"].isin((raw / "test_images.txt").read_text().split()).to_numpy()
    want = np.empty_like(betas)
    for s in np.unique(events["session"]):  # session-train z-scoring, ddof 0
        rows = (events["session"] == s).to_numpy()
        ref = betas[rows & train]
        want[rows] = (betas[rows] - ref.mean(0)) / ref.std(0)
    v1 = np.load(tmp_path / "v1.npy")
    assert v1.shape == (len(events), betas.shape[1] // 2)  # the first half of the voxels
    np.testing.assert_allclose(v1, want[:, : v1.shape[1]], atol=1e-5)
    suite = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(pkg / "test_toyfmri.py")], cwd=pkg, capture_output=True,
                           text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(site)})
    assert suite.returncode == 0 and " passed" in suite.stdout, suite.stdout + suite.stderr


def test_the_featurizer_example_runs_as_written(tmp_path: Path) -> None:
    from PIL import Image

    import nfstore

    _, commands = _plugin(DOCS / "internals" / "adding-a-featurizer.md", tmp_path)
    site = tmp_path / "site"
    _run(commands, tmp_path, site)
    store = nfstore.open_store(tmp_path / "s.zarr")
    h = store.embeddings("colorhist")
    table = store.stimuli("god")
    images = Path(table.attrs["raw_root"])
    with_file = table.file.values != ""  # imagery rows name a category: no image
    assert h.shape == (with_file.sum(), 24) and with_file.sum() < table.sizes["stimulus"]
    for stim, file in zip(table.stimulus.values[with_file], table.file.values[with_file]):
        rgb = np.asarray(Image.open(images / file).convert("RGB")).reshape(-1, 3)
        want = np.concatenate([np.histogram(rgb[:, c], bins=8, range=(0, 256))[0]
                               for c in range(3)]) / len(rgb)
        np.testing.assert_allclose(h.sel(stimulus=stim).values, want, atol=1e-6)
    again = _run(["nf embed s.zarr --model colorhist --workers 0 --no-progress"], tmp_path, site)
    assert "embedded 0 images" in next(iter(again.values()))


@pytest.mark.parametrize("page", ["adding-a-dataset.md", "adding-a-featurizer.md"])
def test_the_examples_are_found(page: str) -> None:
    titles = [t for _, t, _ in code_blocks(DOCS / "internals" / page)]
    assert "pyproject.toml" in titles and "try it" in titles


DEMO_STORE = "nf-demo/nf.zarr"


@pytest.mark.parametrize("page", ["README.md", "docs/index.md", "docs/getting-started.md",
                                  "docs/reference/python.md"])
def test_the_python_examples_run_on_a_store(page: str, train_store_ro: Path) -> None:
    """The examples that query the demo's store run as written on a small store of the same
    kind (NSD and GOD subjects, embeddings, a pool, a synthetic set)."""
    blocks = [body for lang, _, body in code_blocks(ROOT / page)
              if lang == "python" and DEMO_STORE in body]
    assert blocks, f"{page}: no Python example using {DEMO_STORE}"
    for body in blocks:
        namespace: dict[str, object] = {}
        exec(compile(body.replace(DEMO_STORE, str(train_store_ro)), page, "exec"), namespace)
        x = namespace["x"]
        assert x.dims == ("trial", "voxel") and x.shape[1] > 0  # V1 of nsd/subj01
        assert set(x.split.values) == {"test"}
