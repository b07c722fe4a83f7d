"""The HTML site of a notebook run: one card per notebook (its finding, status, time, figures, links),
each notebook rendered to HTML with its figures, and `run.json` with the machine the numbers come from.

A notebook states its finding by calling `finding(paper=..., measured=...)`, which prints one line
`FINDING: paper says ... / we measured ...` from the numbers it just computed; its card shows the last
such line of its outputs, so the site says what each notebook found without opening it.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbconvert import HTMLExporter

from .results import machine
from .util import atomic_write

FINDING_PREFIX = "FINDING:"


def finding(paper: str, measured: str) -> None:
    """Print a notebook's finding as one line, `FINDING: paper says <paper> / we measured <measured>`.
    Build `measured` from this run's numbers; the site's card shows the line. Returns nothing, so a
    notebook cell ending with the call shows the line once."""
    if not paper.strip() or not measured.strip():
        raise ValueError("a finding needs both what the paper says and what this run measured")
    print(f"{FINDING_PREFIX} paper says {' '.join(paper.split())} / we measured {' '.join(measured.split())}",
          flush=True)


def findings(node) -> list[str]:
    """The finding lines (prefix removed) printed by an executed notebook's cells, in order."""
    found = []
    for cell in node.cells:
        for output in cell.get("outputs", []):
            text = output.get("text", "") if output.get("output_type") == "stream" else ""
            text = "".join(text) if isinstance(text, list) else text
            found += [line[len(FINDING_PREFIX):].strip() for line in text.splitlines()
                      if line.startswith(FINDING_PREFIX)]
    return found


@dataclass
class NotebookRun:
    """What happened to one notebook: status "ok", "failed" or "not run", wall time, outputs."""

    source: Path
    output: Path
    parameters: dict[str, Any]
    status: str = "not run"
    wall_s: float = 0.0
    error: str | None = None
    html: Path | None = None
    figures: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.source.stem


@dataclass
class RunReport:
    """A run of the notebook sequence; `index` is the site's entry page."""

    profile: str
    out_dir: Path
    notebooks: list[NotebookRun]
    wall_s: float = 0.0
    index: Path | None = None


def write_site(report: RunReport) -> Path:
    """Render each executed notebook to HTML (figures embedded), save its figures as PNGs, and write
    `index.html` (one card per notebook: status, wall time, its figures, links) plus `run.json`."""
    exporter = HTMLExporter()
    cards = []
    for nb in report.notebooks:
        executed = nb.status != "not run" and nb.output.is_file()
        node = nbformat.read(nb.output if executed else nb.source, as_version=4)
        if executed:
            nb.figures = _save_figures(node, report.out_dir / "figures", nb.name)
            body, _ = exporter.from_notebook_node(node)
            nb.html = nb.output.with_suffix(".html")
            nav = (f'<nav style="padding:8px 16px;font:14px sans-serif;background:#f3f4f6">'
                   f'<a href="index.html">&larr; all notebooks</a> &middot; {_esc(nb.name)} &middot; profile '
                   f'{_esc(report.profile)} &middot; {nb.status}, {nb.wall_s:.1f} s</nav>')
            atomic_write(nb.html, re.sub(r"(<body[^>]*>)", lambda m, nav=nav: m.group(1) + nav, body, count=1))
        cards.append(_card(nb, node))
    info = machine()
    ok = sum(nb.status == "ok" for nb in report.notebooks)
    summary = (f"{ok} of {len(report.notebooks)} notebooks ran without error in {report.wall_s / 60:.1f} min "
               f"&middot; profile <b>{_esc(report.profile)}</b> &middot; {time.strftime('%Y-%m-%d %H:%M')} "
               f"&middot; {_esc(info['platform'])}, {info['cpu_count']} CPUs, torch {_esc(info['torch'])}")
    index = report.out_dir / "index.html"
    atomic_write(index, _PAGE.replace("{summary}", summary).replace("{cards}", "\n".join(cards))
                     .replace("{profile}", _esc(report.profile)))
    atomic_write(report.out_dir / "run.json", json.dumps({
        "profile": report.profile, "wall_s": round(report.wall_s, 2), "machine": info,
        "notebooks": [{"name": nb.name, "status": nb.status, "wall_s": round(nb.wall_s, 2), "error": nb.error,
                       "parameters": nb.parameters, "figures": len(nb.figures)} for nb in report.notebooks]},
        indent=2, default=str))
    return index


def _save_figures(node, folder: Path, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{stem}_*.png"):  # from an earlier run of the same notebook
        stale.unlink()
    paths = []
    for cell in node.cells:
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                path = folder / f"{stem}_{len(paths) + 1}.png"
                atomic_write(path, base64.b64decode(png))
                paths.append(path)
    return paths


def _esc(text: Any) -> str:
    return html.escape(str(text))


def _blurb(node, fallback: str) -> tuple[str, str]:
    """The notebook's title and its first prose paragraph (at most ~300 characters)."""
    paragraphs = [" ".join(part.split()) for c in node.cells if c.cell_type == "markdown"
                  for part in re.split(r"\n\s*\n", c.source)]
    title = next((p.lstrip("# ") for p in paragraphs if p.startswith("# ")), fallback)
    blurb = next((p for p in paragraphs if p and not p.startswith(("#", "[![", "<", "|", "!", "-", "*", "$"))), "")
    blurb = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", blurb).replace("*", "").replace("`", "")
    if len(blurb) > 300:
        blurb = blurb[:300].rsplit(" ", 1)[0] + " …"
    return title, blurb


def _finding_html(nb: NotebookRun, node) -> str:
    """The card's one-line finding: the notebook's last FINDING line, split at ' / we measured '."""
    if nb.status == "not run":
        return ""
    lines = findings(node) if nb.status == "ok" else []
    if not lines:
        return '<p class="finding none">no finding stated (the notebook printed no FINDING line)</p>'
    paper, _, measured = lines[-1].partition(" / we measured ")
    paper = paper.removeprefix("paper says ")
    measured_html = f'<br><b>we measured</b> {_esc(measured)}' if measured else ""
    return f'<p class="finding"><b>paper says</b> {_esc(paper)}{measured_html}</p>'


def _card(nb: NotebookRun, node) -> str:
    """One notebook's card: title, finding, status, wall time, check cells, links, then every figure the
    notebook drew, large; clicking a figure opens its full-size PNG."""
    title, blurb = _blurb(node, nb.name)
    checks = sum(any(line.lstrip().startswith("assert") for line in c.source.splitlines())
                 for c in node.cells if c.cell_type == "code")
    extra = {k: v for k, v in nb.parameters.items() if k != "PROFILE"}
    links = (f'<a href="{_esc(nb.html.name)}">HTML</a> &middot; <a href="{_esc(nb.output.name)}">executed .ipynb</a>'
             if nb.html else "not executed")
    error = f'<pre class="error">{_esc(nb.error)}</pre>' if nb.error else ""
    figures = "".join(f'<figure><a href="figures/{_esc(f.name)}" target="_blank" title="open full size">'
                      f'<img src="figures/{_esc(f.name)}" alt="figure {i} of {_esc(nb.name)}" loading="lazy"></a>'
                      f'<figcaption>figure {i} &middot; click for full size</figcaption></figure>'
                      for i, f in enumerate(nb.figures, 1))
    gallery = f'<div class="gallery">{figures}</div>' if figures else '<div class="nofig">no figure</div>'
    params = f"<p class=\"meta\">parameters: {_esc(extra)}</p>" if extra else ""
    return f"""<article class="card {nb.status.replace(' ', '-')}">
  <h2><a href="{_esc(nb.html.name) if nb.html else '#'}">{_esc(title)}</a></h2>
  {_finding_html(nb, node)}
  <p class="meta"><span class="badge">{_esc(nb.status)}</span> {nb.wall_s:.1f} s &middot; {len(nb.figures)} figures
    &middot; {checks} check cells &middot; <code>{_esc(nb.source.name)}</code> &middot; {links}</p>
  <p class="blurb">{_esc(blurb)}</p>{params}{error}
  {gallery}
</article>"""


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tas_lite notebooks ({profile})</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; background: #f6f7f9; color: #1f2937; }
header { background: #1e3a8a; color: white; padding: 22px 32px; }
header h1 { margin: 0 0 6px; font-size: 26px; } header p { margin: 0; opacity: .9; }
main { display: flex; flex-direction: column; gap: 22px; padding: 24px 32px; max-width: 1500px; margin: 0 auto; }
.card { background: white; border-radius: 10px; padding: 16px 20px; box-shadow: 0 1px 3px rgba(0,0,0,.12);
        border-left: 6px solid #9ca3af; }
.card.ok { border-left-color: #16a34a; } .card.failed { border-left-color: #dc2626; }
h2 { font-size: 20px; margin: 0 0 8px; } h2 a { color: #1e3a8a; text-decoration: none; }
.finding { font-size: 16px; background: #eff6ff; border-left: 4px solid #1e3a8a; padding: 8px 12px; margin: 6px 0 10px; }
.finding.none { background: #f9fafb; border-left-color: #9ca3af; color: #6b7280; font-size: 14px; }
.meta { color: #4b5563; font-size: 13px; margin: 4px 0; } .blurb { margin: 6px 0 12px; color: #374151; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 9px; background: #e5e7eb; font-weight: 600; }
.ok .badge { background: #dcfce7; color: #166534; } .failed .badge { background: #fee2e2; color: #991b1b; }
.error { background: #fef2f2; color: #991b1b; padding: 6px; white-space: pre-wrap; font-size: 12px; }
.links a, .meta a { font-weight: 600; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 14px; }
figure { margin: 0; border: 1px solid #e5e7eb; border-radius: 6px; padding: 6px; background: white; }
figure img { display: block; width: 100%; height: auto; max-height: 520px; object-fit: contain; cursor: zoom-in; }
figcaption { font-size: 12px; color: #6b7280; text-align: center; margin-top: 4px; }
.nofig { color: #9ca3af; padding: 12px; border: 1px dashed #e5e7eb; border-radius: 6px; text-align: center; }
</style></head>
<body><header><h1>tas_lite: heterogeneous distillation notebooks</h1><p>{summary}</p></header>
<main>
{cards}
</main></body></html>
"""
