"""The documentation's links resolve, its commands run files that exist, and the README stays a front page."""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "benchmark" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
README_MAX_LINES = 200

MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target), ![alt](target)
HTML_LINK = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)
EXTERNAL = ("http://", "https://", "mailto:")


def prose(text: str) -> str:
    """The text without fenced code blocks, inline code spans and HTML comments: links there are not links."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "code", text)


def links(path: Path) -> list[str]:
    text = prose(path.read_text())
    return MD_LINK.findall(text) + HTML_LINK.findall(text)


def github_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file."""
    anchors, seen = set(), {}
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", path.read_text(), flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").replace("*", "").lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    anchors.update(re.findall(r"<a\s+(?:name|id)=[\"']([^\"']+)[\"']", text))
    return anchors


def local_targets(path: Path):
    for target in links(path):
        if target.startswith(EXTERNAL):
            continue
        file_part, _, fragment = target.partition("#")
        yield target, (path.parent / unquote(file_part)).resolve() if file_part else path, unquote(fragment)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_resolve(doc):
    assert doc.exists()
    broken = [target for target, resolved, _ in local_targets(doc) if not resolved.exists()]
    assert not broken, f"{doc.relative_to(ROOT)}: links to missing files: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_anchors_resolve(doc):
    broken = [
        target
        for target, resolved, fragment in local_targets(doc)
        if fragment and resolved.suffix == ".md" and resolved.exists() and fragment not in github_anchors(resolved)
    ]
    assert not broken, f"{doc.relative_to(ROOT)}: links to missing headings: {broken}"


FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1", flags=re.S | re.M)
FILE_IN_COMMAND = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.(?:py|sh))\b")  # fmer_kitchen.py, benchmark/run.py


def missing_files_in_commands(path: Path) -> list[str]:
    """The scripts that a doc's code blocks run but the repository lacks (a removed tool, a moved script)."""
    blocks = [block for _, block in FENCE.findall(path.read_text())]
    return [name for block in blocks for name in FILE_IN_COMMAND.findall(block) if not (ROOT / name).exists()]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_name_files_that_exist(doc):
    missing = missing_files_in_commands(doc)
    assert not missing, f"{doc.relative_to(ROOT)}: its commands run files that are not in the repository: {missing}"


def test_docs_pages_are_checked():
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "docs/results.md", "docs/speed.md"} <= names


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_link_check_catches_a_broken_link(tmp_path):
    (tmp_path / "there.md").write_text("# A heading: `x.py`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md#a-heading-xpy) ![img](missing.png) [gone](there.md#nowhere) "
        '`[code](not-a-link.md)` [web](https://example.com) <img src="gone.png">\n'
    )
    targets = {t: (r.exists(), f) for t, r, f in local_targets(page)}
    assert set(targets) == {"there.md#a-heading-xpy", "missing.png", "there.md#nowhere", "gone.png"}
    assert targets["missing.png"][0] is False and targets["gone.png"][0] is False
    assert github_anchors(tmp_path / "there.md") == {"a-heading-xpy"}


def test_command_check_catches_a_removed_script(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "`python benchmark/gone.py` in prose is no command\n"
        "```bash\npython benchmark/run.py --dry-run\nbash benchmark/gone.sh 1 2; python fmer_gone.py --seed 1\n```\n"
    )
    assert missing_files_in_commands(page) == ["benchmark/gone.sh", "fmer_gone.py"]


SUMMARY = ROOT / "benchmark" / "results" / "cpu-fmer-sac-2026-12-03" / "summary.md"


def table_rows(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")
    ]


@pytest.mark.parametrize("doc", ["README.md", "docs/results.md"])
def test_the_cpu_comparison_shows_its_summary_cell_for_cell(doc):
    """The rows of FMER beside SAC on the CPU are summary.md's: mean (std), IQM [CI], seeds and P(FMER > SAC)."""
    summary = table_rows(SUMMARY.read_text())
    ours = {(r[0], r[1], r[5].split()[0]): r for r in summary if len(r) == 9 and r[0] in ("fmer_continuous", "sac_continuous")}
    improvement = {(r[0], r[1]): r[3] for r in summary if len(r) == 4}  # (env, steps) -> P [CI]
    aggregate = {(r[0], r[1]): r[4] for r in summary if len(r) == 6}  # (script, steps) -> IQM [CI] of normalised scores
    table = table_rows((ROOT / doc).read_text())
    shown = [r for r in table if ("fmer_continuous", r[0], r[1].split()[0]) in ours]
    assert len(shown) == 4, shown
    over_envs = [r for r in table if r[0] == "normalised, over both envs"]
    assert len(over_envs) == 2, over_envs
    for _, steps, _, _, fmer_iqm, _, _, sac_iqm, p in over_envs:
        steps = steps.split()[0]
        expected = (
            aggregate[("fmer_continuous", steps)],
            aggregate[("sac_continuous", steps)],
            improvement[("mean over 2 envs", steps)],
        )
        assert (fmer_iqm, sac_iqm, p) == expected, steps
    for env, steps, fmer_seeds, fmer_mean, fmer_iqm, sac_seeds, sac_mean, sac_iqm, p in shown:
        steps = steps.split()[0]
        fmer, sac = ours[("fmer_continuous", env, steps)], ours[("sac_continuous", env, steps)]
        assert (fmer_mean, fmer_iqm, sac_mean, sac_iqm, p) == (fmer[6], fmer[7], sac[6], sac[7], improvement[(env, steps)])
        assert fmer_seeds.startswith(fmer[4].rstrip(" ‡")) and sac_seeds == sac[4].rstrip(" ‡"), env
