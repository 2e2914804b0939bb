"""The run report as one self-contained HTML page, rendered from the report's Markdown sections.

Why render the Markdown and not build HTML beside it: :mod:`pagerl.app.report` writes each
section once, as Markdown; the page is that same text converted, so the two files cannot say
different things. Why a converter of our own: the sections use a small fixed subset (headings,
paragraphs, ``- `` lists, pipe tables, fenced code, inline code, ``**bold**``, ``_emphasis_``,
images), and a dependency for it would be one more install on every cluster node.

Why self-contained: a run directory is copied off clusters, mailed and attached; the page must
show everything on its own, so every image is a ``data:`` URI and there is no external CSS,
script, font or URL. A referenced image that is missing raises instead of leaving a broken
icon a reader may not notice.

Why a check script: whether the page actually displays is a browser's verdict. At the load
event, when every image has loaded or failed, it checks that each ``<img>`` has a non-zero
natural width (not ``img.decode()``: that resolves on a decoder thread which a headless
browser's virtual time does not wait for), counts script errors, and writes the outcome into
``<body>``'s data attributes (``data-images``, ``data-images-ok``, ``data-images-failed``,
``data-errors``, ``data-checked``) for tests to read, and into a visible warning line when
anything failed.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path
from typing import Callable, Collection, List, Mapping, Sequence

_HEADING = re.compile(r"(#{1,6})\s+(.*?)(?:\s+#+)?\s*")
_LIST_ITEM = re.compile(r"- (.*)")
_TABLE_SEPARATOR = re.compile(r"\|?\s*-+\s*(\|\s*-+\s*)*\|?\s*")
_FENCE = "```"
# Inline constructs, innermost first: code spans and images are taken out before escaping and
# emphasis, so nothing inside them is read as Markdown.
_BACKSLASH = re.compile(r"\\([!-/:-@\[-`{-~])")
_CODE = re.compile(r"(`+)(.+?)\1")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_EMPHASIS = re.compile(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)")
_PLACEHOLDER = re.compile("\x00(\\d+)\x00")
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")

_STYLE = """\
body { font-family: system-ui, sans-serif; max-width: 75rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.45; color: #1d1d1d; }
h1 { font-size: 1.7rem; } h2 { font-size: 1.35rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.88rem; display: block; overflow-x: auto; }
th, td { border: 1px solid #b9b9b9; padding: 0.25rem 0.55rem; text-align: left; vertical-align: top; }
th { background: #efefef; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.9em; }
code { background: #f3f3f3; padding: 0 0.2em; border-radius: 3px; }
pre { background: #f3f3f3; padding: 0.6rem; overflow-x: auto; }
pre code { padding: 0; }
img { max-width: 100%; height: auto; }
details { border: 1px solid #ccc; border-radius: 4px; padding: 0.3rem 0.9rem; margin: 1.5rem 0; }
summary { cursor: pointer; font-weight: 600; font-size: 1.2rem; }
#report-check { background: #fde2e2; border: 1px solid #b00020; padding: 0.5rem 0.8rem; font-weight: 600; }
"""

_CHECK_SCRIPT = """\
(function () {
  "use strict";
  var errors = 0, outcome = null;
  function record() {
    var data = document.body.dataset, note = document.getElementById("report-check");
    data.images = String(outcome.total);
    data.imagesOk = String(outcome.ok);
    data.imagesFailed = String(outcome.total - outcome.ok);
    data.errors = String(errors);
    data.checked = "true";
    if (outcome.ok < outcome.total || errors > 0) {
      note.textContent = "Warning: " + (outcome.total - outcome.ok) + " of " + outcome.total +
        " images did not display and " + errors + " script error(s) occurred; this report is incomplete.";
      note.hidden = false;
    }
  }
  function failed() { errors += 1; if (outcome) { record(); } }
  window.onerror = function () { failed(); return false; };
  window.addEventListener("unhandledrejection", failed);
  window.addEventListener("load", function () {
    var images = Array.prototype.slice.call(document.images);
    outcome = {total: images.length, ok: images.filter(function (img) {
      return img.complete && img.naturalWidth > 0;
    }).length};
    record();
  });
})();
"""


def render_html(
    title: str,
    sections: Mapping[str, str],
    base_dir: Path,
    *,
    lead: Sequence[str] = (),
    folded: Collection[str] = (),
) -> str:
    """The whole page: the sections named in ``lead`` first, in that order, then the others in
    theirs; a section named in ``folded`` goes in a closed ``<details>`` under its own heading.
    Empty sections are left out. Images are read relative to ``base_dir``."""
    order = [key for key in lead if key in sections] + [key for key in sections if key not in lead]
    body = [_folded(sections[key], base_dir) if key in folded else markdown_to_html(sections[key], base_dir)
            for key in order if sections[key]]
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>\n{_STYLE}</style>",
        f"<script>\n{_CHECK_SCRIPT}</script>",
        "</head>",
        "<body>",
        '<p id="report-check" role="alert" hidden></p>',
        *body,
        "</body>",
        "</html>",
        "",
    ])


def markdown_to_html(text: str, base_dir: Path) -> str:
    """HTML of the Markdown subset the report's sections use; all text escaped."""
    lines = text.splitlines()
    out: List[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if line.startswith(_FENCE):
            end = _block_end(lines, i + 1, lambda j: not lines[j].startswith(_FENCE))
            out.append(f"<pre><code>{html.escape(chr(10).join(lines[i + 1:end]))}</code></pre>")
            i = end + 1
            continue
        heading = _HEADING.fullmatch(line)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2), base_dir)}</h{level}>")
            end = i + 1
        elif _starts_table(lines, i):
            end = _block_end(lines, i + 2, lambda j: lines[j].lstrip().startswith("|"))
            out.append(_table(lines[i], lines[i + 2:end], base_dir))
        elif _LIST_ITEM.match(line):
            end = _block_end(lines, i + 1, lambda j: _continues(lines, j))
            items: List[str] = []
            for item in lines[i:end]:
                match = _LIST_ITEM.match(item)
                if match:
                    items.append(match.group(1))
                else:
                    items[-1] += "\n" + item.strip()
            out.append("<ul>\n" + "\n".join(f"<li>{_inline(item, base_dir)}</li>" for item in items) + "\n</ul>")
        else:
            end = _block_end(lines, i + 1, lambda j: _continues(lines, j) and not _LIST_ITEM.match(lines[j]))
            out.append(f"<p>{_inline(chr(10).join(s.strip() for s in lines[i:end]), base_dir)}</p>")
        i = end
    return "\n".join(out)


def _folded(text: str, base_dir: Path) -> str:
    """A section inside a closed ``<details>``, its heading as the summary."""
    first, _, rest = text.partition("\n")
    heading = _HEADING.fullmatch(first)
    summary, body = (heading.group(2), rest) if heading else ("Details", text)
    return (f"<details>\n<summary>{_inline(summary, base_dir)}</summary>\n"
            f"{markdown_to_html(body, base_dir)}\n</details>")


def _block_end(lines: Sequence[str], start: int, continues: Callable[[int], bool]) -> int:
    """The index of the first line from ``start`` on that does not continue the block."""
    end = start
    while end < len(lines) and continues(end):
        end += 1
    return end


def _continues(lines: Sequence[str], j: int) -> bool:
    """Whether line ``j`` carries on a paragraph or list item: not blank and opening no block."""
    line = lines[j]
    return bool(line.strip()) and not line.startswith(_FENCE) and not _HEADING.fullmatch(line) \
        and not _starts_table(lines, j)


def _starts_table(lines: Sequence[str], i: int) -> bool:
    return (lines[i].lstrip().startswith("|") and i + 1 < len(lines)
            and _TABLE_SEPARATOR.fullmatch(lines[i + 1].strip()) is not None)


def _table(header: str, rows: Sequence[str], base_dir: Path) -> str:
    """A pipe table; rows are padded or cut to the header's width, as GitHub renders them."""
    head = _cells(header)
    width = len(head)
    body = [(_cells(row) + [""] * width)[:width] for row in rows]
    lines = ["<table>", "<thead>", _row("th", head, base_dir), "</thead>"]
    if body:
        lines += ["<tbody>", *(_row("td", row, base_dir) for row in body), "</tbody>"]
    return "\n".join(lines + ["</table>"])


def _row(tag: str, cells: Sequence[str], base_dir: Path) -> str:
    return "<tr>" + "".join(f"<{tag}>{_inline(c, base_dir)}</{tag}>" for c in cells) + "</tr>"


def _cells(row: str) -> List[str]:
    """A row's cells: split at the unescaped pipes; ``\\|`` is a pipe inside a cell (code included)."""
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", row)]


def _inline(text: str, base_dir: Path) -> str:
    """Code spans, images, backslash escapes, bold and emphasis; everything else escaped."""
    text = text.replace("\x00", "\ufffd")  # NUL marks the taken-out parts below
    taken: List[str] = []

    def take(markup: str) -> str:
        taken.append(markup)
        return f"\x00{len(taken) - 1}\x00"

    text = _CODE.sub(lambda m: take(f"<code>{html.escape(m.group(2))}</code>"), text)
    text = _IMAGE.sub(lambda m: take(_image(m.group(1), m.group(2), base_dir)), text)
    text = _BACKSLASH.sub(lambda m: take(html.escape(m.group(1))), text)
    text = html.escape(text)
    text = _BOLD.sub(r"<strong>\1</strong>", text)
    text = _EMPHASIS.sub(r"<em>\1</em>", text)
    return _PLACEHOLDER.sub(lambda m: taken[int(m.group(1))], text)


def _image(alt: str, src: str, base_dir: Path) -> str:
    """An ``<img>`` with the file embedded as a data URI; a missing or non-image file raises."""
    if _URL_SCHEME.match(src):
        raise ValueError(f"image {src}: the HTML report embeds files of the run directory only, not URLs")
    path = base_dir / src
    if not path.is_file():
        raise ValueError(f"{path}: image referenced by the report does not exist")
    mime = mimetypes.guess_type(path.name)[0]
    if not mime or not mime.startswith("image/"):
        raise ValueError(f"{path}: not an image file the report can embed")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{data}">'
