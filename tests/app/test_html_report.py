"""The HTML report: the Markdown converter, embedded images, the folded recipe, and the page as a
real headless Chromium displays it (skipped where no Chromium is installed)."""

from __future__ import annotations

import base64
import re
import runpy
import shutil
import subprocess
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from matplotlib.image import imsave

from pagerl.app.report import write_report
from pagerl.tracking.html_report import markdown_to_html, render_html

# The hand-made run directory of the Markdown report's tests (a sibling module; tests run with
# --import-mode=importlib, so it is not importable by name).
run_dir = runpy.run_path(str(Path(__file__).with_name("test_report.py")))["run_dir"]

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _png(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, np.linspace(0, 1, 48).reshape(4, 4, 3))
    return path.read_bytes()


# ---------------------------------------------------------------- the converter


def test_tables_escape_every_cell_and_keep_escaped_pipes_and_code(tmp_path):
    text = ("| method | note |\n|--------|------|\n"
            "| `a\\|b` | <script>alert(1)</script> & **bold** |\n| short |\n")
    out = markdown_to_html(text, tmp_path)
    assert "<thead>\n<tr><th>method</th><th>note</th></tr>\n</thead>" in out
    assert ("<tr><td><code>a|b</code></td>"
            "<td>&lt;script&gt;alert(1)&lt;/script&gt; &amp; <strong>bold</strong></td></tr>") in out
    assert "<tr><td>short</td><td></td></tr>" in out  # a short row is padded to the header's width
    assert "<script>" not in out


def test_inline_code_bold_emphasis_and_underscores_inside_words(tmp_path):
    out = markdown_to_html("Some `x < y **not bold**` and **bold** in mean_clicks, _Skipped: `a_b`._", tmp_path)
    assert out == ("<p>Some <code>x &lt; y **not bold**</code> and <strong>bold</strong> in mean_clicks, "
                   "<em>Skipped: <code>a_b</code>.</em></p>")


def test_headings_lists_paragraphs_and_fenced_code(tmp_path):
    text = ("# Run report: a&b\n\nFirst line\nsecond line.\n\n## Data\n"
            "- **run**: name=<x>\n- two\n\n```\n<pre> & `raw`\n```\n### Small")
    assert markdown_to_html(text, tmp_path).splitlines() == [
        "<h1>Run report: a&amp;b</h1>",
        "<p>First line", "second line.</p>",
        "<h2>Data</h2>",
        "<ul>", "<li><strong>run</strong>: name=&lt;x&gt;</li>", "<li>two</li>", "</ul>",
        "<pre><code>&lt;pre&gt; &amp; `raw`</code></pre>",
        "<h3>Small</h3>",
    ]


def test_images_are_embedded_as_data_uris(tmp_path):
    png = _png(tmp_path / "plots" / "x.png")
    out = markdown_to_html('![a "loss" <curve>](plots/x.png)', tmp_path)
    assert out == (f'<p><img alt="a &quot;loss&quot; &lt;curve&gt;" '
                   f'src="data:image/png;base64,{base64.b64encode(png).decode()}"></p>')


def test_a_missing_image_or_a_url_raises_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"plots/gone\.png: image referenced by the report does not exist"):
        markdown_to_html("![gone](plots/gone.png)", tmp_path)
    with pytest.raises(ValueError, match="https://example.com/x.png"):
        markdown_to_html("![remote](https://example.com/x.png)", tmp_path)


def test_lead_sections_come_first_and_folded_ones_sit_in_closed_details(tmp_path):
    sections = {"title": "# Run <1>", "recipe": "## Recipe\n\n- **run**: seed=7", "empty": "",
                "eval": "## Evaluation\n\ntext"}
    page = render_html("Run <1>", sections, tmp_path, lead=("title", "eval"), folded=("recipe",))
    assert "<title>Run &lt;1&gt;</title>" in page
    body = page[page.index("<body>"):]
    assert body.index("<h1>Run &lt;1&gt;</h1>") < body.index("<h2>Evaluation</h2>") < body.index("<details>")
    assert ("<details>\n<summary>Recipe</summary>\n<ul>\n<li><strong>run</strong>: seed=7</li>\n</ul>\n"
            "</details>") in body


# ---------------------------------------------------------------- the run's page


def test_write_report_writes_a_self_contained_page_beside_the_markdown(run_dir):
    markdown = write_report(run_dir).read_text()
    page = (run_dir / "report.html").read_text()
    assert "<title>Run report: handmade</title>" in page
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert images == ["plots/sft_loss.png", "plots/eval_bars.png"]
    assert page.count('<img alt="') == page.count('src="data:image/png;base64,') == len(images)
    assert not re.search(r"(src|href)=\"(?!data:)|<link|@import|url\(", page)  # nothing fetched from outside
    body = page[page.index("<body>"):]
    assert body.index("<h1>") < body.index("<h2>Evaluation</h2>") < body.index("<details>\n<summary>Recipe")
    assert "<details open" not in page
    recipe = body[body.index("<details>"):body.index("</details>")]
    assert "<li><strong>run</strong>: name=handmade, seed=7, stages=[synth, sft, eval]</li>" in recipe
    assert "<td><code>sft</code></td><td>0.550 ± 0.012</td><td>1.210 ± 0.030</td>" in body
    assert "<h2>SFT learning curve</h2>" in body and "<h2>Data</h2>" in body
    assert not list(run_dir.glob("*.tmp"))


# ---------------------------------------------------------------- in a browser


def _browser() -> str:
    found = next((path for path in map(shutil.which, BROWSERS) if path), None)
    if found is None:
        pytest.skip(f"no headless browser on PATH (looked for {', '.join(BROWSERS)}); "
                    "`apt-get install chromium` to run it")
    return found


def _displayed(page: Path, profile: Path) -> tuple[Dict[str, str], str]:
    """The body's attributes and the DOM after Chromium loaded ``page`` and its scripts ran."""
    proc = subprocess.run(
        [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stdout[:2000]
    return dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1))), proc.stdout


def test_chromium_displays_every_image_of_the_report_without_errors(run_dir, tmp_path):
    _browser()
    write_report(run_dir)
    attrs, dom = _displayed(run_dir / "report.html", tmp_path / "profile")
    tags = dom.count("<img ")
    assert tags >= 2
    assert attrs.get("data-checked") == "true", attrs
    assert (attrs["data-images"], attrs["data-images-ok"], attrs["data-images-failed"], attrs["data-errors"]) == (
        str(tags), str(tags), "0", "0")
    assert re.search(r'<p id="report-check" role="alert" hidden(="")?></p>', dom)


def test_chromium_check_reports_a_broken_image_and_a_script_error(tmp_path):
    _browser()
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "broken.png").write_bytes(b"not a png")
    page = render_html("broken", {"body": "# broken\n\n![broken](plots/broken.png)"}, tmp_path)
    path = tmp_path / "broken.html"
    path.write_text(page.replace("</body>", "<script>notDefined();</script>\n</body>"))
    attrs, dom = _displayed(path, tmp_path / "profile")
    assert (attrs["data-images"], attrs["data-images-ok"], attrs["data-images-failed"], attrs["data-errors"]) == (
        "1", "0", "1", "1")
    assert "Warning: 1 of 1 images did not display and 1 script error(s) occurred" in dom
    assert not re.search(r'id="report-check"[^>]*hidden', dom)
