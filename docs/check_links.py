"""Check the relative links of the Markdown files: every target file exists, every #anchor is a
heading of its file, and every test named in a link text (`test_name` -> tests/file.py) is
defined in that file.

    python docs/check_links.py        # from the repository root; exit status 1 on a broken link
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*)$", re.MULTILINE)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {slug(h) for h in HEADING.findall(text)}


def broken_links(md):
    text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.DOTALL)
    for label, target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto: are not checked here
        file_part, _, anchor = target.partition("#")
        dest = (md.parent / file_part).resolve() if file_part else md
        if not dest.exists():
            yield f"{target}: no such file"
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            yield f"{target}: no heading #{anchor}"
        name = label.strip("`")
        if name.startswith("test_") and dest.suffix == ".py":
            if not re.search(rf"^def {re.escape(name)}\(", dest.read_text(encoding="utf-8"), re.MULTILINE):
                yield f"{target}: no test {name}"


def main():
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    bad = 0
    for md in files:
        if not md.exists():
            continue
        for problem in broken_links(md):
            print(f"{md.relative_to(ROOT)}: {problem}")
            bad += 1
    print(f"{len(files)} files checked, {bad} broken links")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
