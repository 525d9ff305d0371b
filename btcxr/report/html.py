"""The report page: plain HTML with inline CSS, no scripts and no external resources.

Images are referenced relative to the report folder, so the folder can be copied, zipped or served as is.
Every text that comes from data (init names, notes, configs) is escaped here or in `tables.Table`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from btcxr.engine.io import write_text

CSS = """
:root { --ink: #1d2329; --muted: #5b6670; --line: #d9dee3; --accent: #24527a; --zebra: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
       font: 15px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 28px 32px 60px; }
header h1 { margin: 0 0 4px; font-size: 26px; }
header p.sub { margin: 0; color: var(--muted); }
h2 { margin: 40px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--accent); font-size: 21px;
     color: var(--accent); }
h3 { margin: 24px 0 8px; font-size: 16px; }
nav { display: flex; flex-wrap: wrap; gap: 4px 18px; margin: 18px 0 8px; padding: 10px 14px;
      background: var(--zebra); border: 1px solid var(--line); border-radius: 6px; font-size: 14px; }
nav a { color: var(--accent); text-decoration: none; white-space: nowrap; }
.notes { margin: 18px 0; padding: 12px 16px; background: #fff7e0; border: 1px solid #e8c560;
         border-left: 6px solid #d49b00; border-radius: 6px; }
.notes strong { display: block; margin-bottom: 4px; }
.notes ul { margin: 0; padding-left: 20px; }
.summary { font-size: 15.5px; background: #eef4fa; border-left: 6px solid var(--accent); padding: 12px 16px;
           border-radius: 6px; }
.summary p { margin: 6px 0; }
.summary ul { margin: 4px 0 10px; padding-left: 22px; font-size: 14.5px; }
.summary li { margin: 2px 0; }
p.absent { color: var(--muted); font-style: italic; }
p.footnote { margin: 4px 0; color: var(--muted); font-size: 13px; }
table { border-collapse: collapse; margin: 10px 0 6px; font-size: 14px; }
p.caption { margin: 18px 0 0; font-weight: 600; }
th, td { padding: 5px 12px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top;
         white-space: nowrap; }
th { background: #eef1f4; border-bottom: 2px solid #b8c1ca; white-space: nowrap; }
tbody tr:nth-child(even) { background: var(--zebra); }
tbody tr.group td { border-top: 2px solid #aab4be; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.scroll { overflow-x: auto; }
figure { margin: 14px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13.5px; margin-top: 4px; max-width: 900px; }
.figrow { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.figrow figure { flex: 1 1 540px; max-width: 620px; }
details { margin: 8px 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px; }
summary { cursor: pointer; font-weight: 600; }
pre { background: #f6f8fa; padding: 10px 12px; overflow-x: auto; font-size: 12.5px; line-height: 1.4;
      border-radius: 4px; }
footer { margin-top: 48px; color: var(--muted); font-size: 13px; }
"""


def esc(text: object) -> str:
    return html.escape(str(text))


def paragraph(text: str, cls: str | None = None) -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<p{attr}>{esc(text)}</p>\n"


def link_paragraph(before: str, href: str, text: str, after: str = "") -> str:
    return f'<p>{esc(before)}<a href="{esc(href)}">{esc(text)}</a>{esc(after)}</p>\n'


def bullets(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>\n" if items else ""


def absent(text: str) -> str:
    """The line shown instead of a section whose inputs are missing."""
    return paragraph(text, "absent")


def figure(src: str, caption: str, alt: str | None = None) -> str:
    return (f'<figure><img src="{esc(src)}" alt="{esc(alt or caption)}" loading="lazy">'
            f"<figcaption>{esc(caption)}</figcaption></figure>\n")


def figure_row(figures: list[str]) -> str:
    return '<div class="figrow">\n' + "".join(figures) + "</div>\n"


def scroll(inner: str) -> str:
    return f'<div class="scroll">{inner}</div>\n'


def details(title: str, inner_html: str, opened: bool = True) -> str:
    return f"<details{' open' if opened else ''}><summary>{esc(title)}</summary>{inner_html}</details>\n"


def pre_block(title: str, text: str, opened: bool = True) -> str:
    return details(title, f"<pre>{esc(text)}</pre>", opened)


@dataclass
class Section:
    anchor: str
    title: str
    body: str


@dataclass
class Page:
    title: str
    subtitle: str = ""
    notes: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    footer: str = ""

    def add(self, anchor: str, title: str, *parts: str) -> None:
        self.sections.append(Section(anchor, title, "".join(parts)))

    def render(self) -> str:
        out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
               '<meta name="viewport" content="width=device-width, initial-scale=1">',
               f"<title>{esc(self.title)}</title>", f"<style>{CSS}</style>", "</head>", "<body><main>",
               f"<header><h1>{esc(self.title)}</h1>"
               + (f'<p class="sub">{esc(self.subtitle)}</p>' if self.subtitle else "") + "</header>"]
        if self.notes:
            out.append('<div class="notes"><strong>Read this first</strong><ul>'
                       + "".join(f"<li>{esc(n)}</li>" for n in self.notes) + "</ul></div>")
        out.append("<nav>" + "".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in self.sections)
                   + "</nav>")
        for s in self.sections:
            out.append(f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>\n{s.body}</section>')
        if self.footer:
            out.append(f"<footer>{esc(self.footer)}</footer>")
        out.append("</main></body></html>")
        return "\n".join(out) + "\n"

    def write(self, path: Path) -> Path:
        write_text(path, self.render())
        return path
