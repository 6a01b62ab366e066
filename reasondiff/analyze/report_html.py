"""`report.html`: report.md and its appendix as one self-contained page (Python-Markdown).

Every figure is embedded (PNG as a base64 data URI), the style is inline and there is no script,
so the file can be mailed or attached as it is. Links to CSVs and other pages stay relative (they
work next to the analyze directory); nothing points to the network.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:0 auto;padding:1.5em 2em;
color:#222;line-height:1.5}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:.86em;margin:.6em 0;display:block;overflow-x:auto}
th,td{border:1px solid #ddd;padding:.25em .55em}th{background:#f5f5f5}td{font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:.6em auto}
code{background:#f4f4f4;padding:0 .25em;border-radius:3px;font-size:.9em}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.82em}
blockquote{color:#666;border-left:3px solid #ddd;margin-left:0;padding-left:1em}
em{color:#444}details{margin:.4em 0}summary{cursor:pointer;color:#444}
"""

_IMG = re.compile(r'<img([^>]*?)src="([^"]+)"')


def _data_uri(path: Path) -> str | None:
    if not path.is_file():
        return None
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def embed_images(body: str, base: Path) -> str:
    """Every <img src="relative path"> replaced by a data URI of that file (a missing file keeps its alt text)."""

    def replace(match: re.Match) -> str:
        attrs, src = match.group(1), match.group(2)
        if src.startswith("data:"):
            return match.group(0)
        uri = _data_uri((base / html.unescape(src)).resolve())
        return f'<img{attrs}src="{uri}"' if uri else f'<img{attrs}data-missing="{src}" src=""'

    return _IMG.sub(replace, body)


def markdown_to_html(text: str) -> str:
    import markdown

    return markdown.markdown(text, extensions=["tables", "fenced_code", "md_in_html"], output_format="html")


def render_report_html(report_md: str, appendix_md: str, base: Path, *, title: str) -> str:
    """One page: the report, then its appendix; images read from `base` (the analyze directory)."""
    body = markdown_to_html(report_md.replace("](report_appendix.md)", "](#appendix)"))
    body += '\n<hr id="appendix">\n' + markdown_to_html(appendix_md)
    body = embed_images(body, Path(base))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")
