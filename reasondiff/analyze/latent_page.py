"""`latents.html`: one self-contained page to read the latents that matter, in the manner of
SAEDashboard / Neuronpedia feature pages.

- An index of every shown latent (class, r, Δ, cosine, frequencies, ν, top promoted token), sortable
  by any column, with a search box that filters the index and the cards together (free text
  matches what the index shows: the latent, its class, its section and its logit-effect tokens;
  "also search contexts" adds the top contexts' text; `#123` picks latent 123 exactly). Tokens
  that are whitespace are shown escaped (`␣`, `\n`), never as a blank cell.
- One card per latent: the decoder-norm facts (r, Δ, cosine, both norms, β/ν where Latent Scaling
  ran), the histogram of its non-zero activations on general and reasoning text (log bins),
  the direct logit effects of its decoder direction through each model's unembedding (top
  promoted / suppressed tokens, from latent_logits.csv), and its top contexts on general and on
  reasoning text side by side. Every token of a context shows its activation value under it (no
  hovering), shaded on a colour scale whose key is drawn on the card; the peak token is outlined.

No script or style is fetched from anywhere (circuitsvis imports its front end from unpkg, so its
pages need the network; sae-vis expects a TransformerLens model and one SAE, not a crosscoder's two
decoders); every string from a model or a corpus is HTML-escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from reasondiff.analyze.contexts import ActivationHistogram, Example, LatentCard

HEAT = (255, 140, 0)
"""The colour of the highest activation on a card (white = 0); the key is drawn on every card."""
TEXT_COLORS = {"general": "#4c72b0", "reasoning": "#dd8452"}
CLASS_COLORS = {"base_only": "#1f5fa8", "tuned_only": "#c0504d", "shared": "#2b7a2b", "other": "#666666",
                "designated_shared": "#7b3fa0", "dead": "#999999"}

FACT_FORMATS = {
    "relative_norm": ("r", ".4f", "‖d_tuned‖ / (‖d_base‖ + ‖d_tuned‖): 0 base-only, 1 tuned-only"),
    "delta_norm": ("Δ", ".4f", "Minder et al.'s ½((‖d_tuned‖ − ‖d_base‖) / max + 1)"),
    "cosine": ("cosine", ".3f", "cosine(d_base, d_tuned)"),
    "decoder_norm_base": ("‖d_base‖", ".4g", "decoder norm, normalised space"),
    "decoder_norm_tuned": ("‖d_tuned‖", ".4g", "decoder norm, normalised space"),
    "freq_general": ("freq general", ".3%", "fraction of held-out general-text tokens where it fires"),
    "freq_reasoning": ("freq reasoning", ".3%", "fraction of reasoning-conversation tokens where it fires"),
    "mean_activation": ("mean act", ".3g", "mean activation where it fires (general text)"),
    "max_activation": ("max act", ".3g", "max activation on general text"),
    "beta_error_base": ("β_err base", ".3g", "Latent Scaling β on the base model's error"),
    "beta_error_tuned": ("β_err tuned", ".3g", "Latent Scaling β on the tuned model's error"),
    "nu_error": ("ν_error", ".3g", "β_error(other) / β_error(own): ≈0 truly specific"),
    "nu_reconstruction": ("ν_recon", ".3g", "β_reconstruction(other) / β_reconstruction(own)"),
}
"""Fact key -> (label, format, tooltip); shown in this order."""

INDEX_COLUMNS = (("latent", "latent"), ("section", "shown as"), ("class", "class (r)"), ("relative_norm", "r"),
                 ("delta_norm", "Δ"), ("cosine", "cos"), ("freq_general", "freq gen"),
                 ("freq_reasoning", "freq reas"), ("nu_error", "ν_error"), ("top_token", "top promoted (own model)"))

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0 auto;padding:1.2em 1.6em;max-width:1500px;
color:#222;line-height:1.4}
h1{font-size:1.35em;margin:.2em 0}h2{font-size:1.1em;margin:1.6em 0 .4em;border-bottom:1px solid #ccc}
.intro{color:#444;font-size:.92em;max-width:95ch}
.toolbar{position:sticky;top:0;background:#fff;padding:.5em 0;z-index:2;border-bottom:1px solid #eee;
display:flex;gap:1em;align-items:center}
#search{font-size:1em;padding:.35em .6em;width:32em;max-width:100%;border:1px solid #bbb;border-radius:4px}
#count{color:#555;font-size:.9em}
table.index{border-collapse:collapse;font-size:.85em;margin:.5em 0 1.5em}
table.index th,table.index td{padding:.2em .6em;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
table.index th{cursor:pointer;background:#f6f6f6;position:sticky;top:2.9em;user-select:none}
table.index th.sorted-asc::after{content:" ▲"}table.index th.sorted-desc::after{content:" ▼"}
table.index td.l,table.index th.l{text-align:left}
.card{border:1px solid #ddd;border-radius:6px;padding:.7em 1em;margin:1.2em 0;scroll-margin-top:3.5em}
.card header{display:flex;gap:1em;align-items:baseline;flex-wrap:wrap}
.card h3{margin:0;font-size:1.05em}.card header a{font-size:.8em;color:#777}
.badge{font-size:.78em;padding:.05em .5em;border-radius:9px;color:#fff}
.top{display:grid;grid-template-columns:minmax(230px,300px) minmax(260px,360px) 1fr;gap:1.2em;margin:.6em 0}
table.facts{font-size:.82em;border-collapse:collapse}table.facts td{padding:.08em .5em .08em 0}
table.facts td.k{color:#666}table.facts td.v{font-variant-numeric:tabular-nums;text-align:right}
.hist svg{display:block}.cap{font-size:.75em;color:#666}
.logits{display:flex;gap:1em;flex-wrap:wrap}
table.logit{font-size:.78em;border-collapse:collapse}
table.logit caption{font-weight:600;text-align:left;font-size:1.05em;max-width:22em}
table.logit.faint{opacity:.45}
table.logit td{padding:.02em .35em;font-variant-numeric:tabular-nums}
table.logit td.tokcell{font-family:ui-monospace,Menlo,monospace;white-space:pre;max-width:11em;overflow:hidden;
text-overflow:ellipsis}
td.pos{color:#1a6e1a;text-align:right}td.neg{color:#b22222;text-align:right}
.cols{display:flex;gap:1.2em}.col{flex:1;min-width:0}.col h4{margin:.4em 0;font-size:.9em}
.ex{display:flex;flex-wrap:wrap;align-items:flex-start;font-family:ui-monospace,Menlo,monospace;font-size:.78em;
border-left:3px solid #eee;padding:.2em 0 .2em .5em;margin:.35em 0;row-gap:.15em}
.ex .meta{flex-basis:100%;font-family:system-ui,sans-serif;font-size:.85em;color:#888}
.tok{display:inline-flex;flex-direction:column;align-items:center;border-radius:2px;padding:0 1px;margin:0 1px 0 0}
.tok .s{white-space:pre}.tok .v{font-size:.72em;color:#555;min-height:1.1em;font-variant-numeric:tabular-nums}
.tok.peak{outline:1.5px solid #c00}.nl{flex-basis:100%;height:0}
.key{display:flex;align-items:center;gap:.4em;font-size:.75em;color:#555;margin:.2em 0}
.key .bar{width:140px;height:10px;border:1px solid #ccc}
.none{color:#999;font-size:.85em}
"""

_JS = """
(function(){
  const search=document.getElementById('search'), count=document.getElementById('count');
  const contexts=document.getElementById('in-contexts');
  const rows=[...document.querySelectorAll('table.index tbody tr')], cards=[...document.querySelectorAll('.card')];
  function matches(el, terms){
    const wide=contexts.checked;
    return terms.every(t => t.startsWith('#') ? el.dataset.latent === t.slice(1)
      : el.dataset.search.includes(t) || (wide && el.dataset.context.includes(t)));
  }
  function filter(){
    const terms=search.value.toLowerCase().split(/\\s+/).filter(Boolean);
    let shown=0;
    for(const el of rows){el.hidden=!matches(el, terms);}
    for(const el of cards){const ok=matches(el, terms); el.hidden=!ok; if(ok) shown++;}
    count.textContent=shown+' of '+cards.length+' latents';
  }
  search.addEventListener('input', filter);
  contexts.addEventListener('change', filter);
  document.querySelectorAll('table.index th').forEach((th, col) => th.addEventListener('click', () => {
    const tbody=th.closest('table').tBodies[0], asc=!th.classList.contains('sorted-asc');
    th.parentNode.querySelectorAll('th').forEach(h => h.classList.remove('sorted-asc','sorted-desc'));
    th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
    const key=r=>{const v=r.cells[col].dataset.value; const n=parseFloat(v); return isNaN(n) ? v : n;};
    const sorted=[...tbody.rows].sort((a,b)=>{const x=key(a), y=key(b);
      if(typeof x!==typeof y) return typeof x==='number' ? -1 : 1;
      return (x<y ? -1 : x>y ? 1 : 0)*(asc ? 1 : -1);});
    sorted.forEach(r => tbody.appendChild(r));
  }));
  filter();
})();
"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def format_unit_interval(value: float) -> str:
    """r or Δ to 4 decimals, and, within 1e-4 of an end, its distance from that end (1 − 2.3e-06):
    rounding a latent at r = 0.999998 to "1" hides that it still has a base decoder vector."""
    if 0 < value < 1e-4:
        return f"{value:.1e}"
    if 0 < 1 - value < 1e-4:
        return f"1 − {1 - value:.1e}"
    return f"{value:.4f}"


def format_fact(key: str, value: object) -> str:
    """A fact as shown on the page (r and Δ by format_unit_interval)."""
    number = _number(value)
    if math.isnan(number):
        return "–" if value in ("", None) or isinstance(value, float) else str(value)
    if math.isinf(number):
        return "∞" if number > 0 else "−∞"
    if key in ("relative_norm", "delta_norm"):
        return format_unit_interval(number)
    return format(number, FACT_FORMATS.get(key, ("", ".4g", ""))[1])


def heat(value: float, peak: float) -> str:
    """Background of a token: white at 0, HEAT at the card's peak activation (linear)."""
    alpha = 0.0 if peak <= 0 else max(0.0, min(1.0, value / peak))
    return f"rgba({HEAT[0]},{HEAT[1]},{HEAT[2]},{alpha:.2f})"


def _value_label(value: float) -> str:
    if value <= 0:
        return ""
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _token_html(text: str, value: float, peak: float, is_peak: bool) -> str:
    shown = text.replace("\n", "↵").replace("\t", "⇥") or "∅"
    cls = "tok peak" if is_peak else "tok"
    token = (f'<span class="{cls}" style="background:{heat(value, peak)}" title="{value:.4g}">'
             f'<span class="s">{_esc(shown)}</span><span class="v">{_value_label(value)}</span></span>')
    return token + ('<span class="nl"></span>' if "\n" in text else "")


def example_html(example: Example, peak: float) -> str:
    spans = "".join(_token_html(t, a, peak, i == example.peak)
                    for i, (t, a) in enumerate(zip(example.tokens, example.activations, strict=True)))
    top = max(example.activations, default=0.0)
    return (f'<div class="ex"><span class="meta">context {example.context} · peak {top:.3g}</span>{spans}</div>')


def _key_html(peak: float) -> str:
    gradient = f"linear-gradient(to right,{heat(0, 1)},{heat(1, 1)})"
    return (f'<div class="key"><span>0</span><span class="bar" style="background:{gradient}"></span>'
            f"<span>{peak:.3g}</span><span>activation (value under each token; outlined: the context's peak)</span></div>")


def histogram_svg(histograms: dict[str, list[int]], *, width: int = 300, height: int = 110) -> str:
    """Bars of each text kind's counts over ActivationHistogram.EDGES (log x axis), overlaid."""
    edges = [float(e) for e in ActivationHistogram.EDGES]
    used = [i for counts in histograms.values() for i, c in enumerate(counts) if c > 0]
    if not used:
        return '<p class="none">no non-zero activation recorded</p>'
    lo, hi = max(min(used) - 1, 0), min(max(used) + 2, len(edges) - 1)
    tallest = max(max(counts[lo:hi]) for counts in histograms.values() if counts)
    pad_left, pad_bottom = 4, 16
    plot_w, plot_h = width - pad_left * 2, height - pad_bottom - 4
    n_bins = hi - lo
    bar_w = plot_w / n_bins
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="activation histogram">']
    for kind, counts in histograms.items():
        color = TEXT_COLORS.get(kind, "#777")
        for i in range(lo, hi):
            c = counts[i] if i < len(counts) else 0
            if c <= 0:
                continue
            h = plot_h * c / tallest
            x = pad_left + (i - lo) * bar_w
            parts.append(f'<rect x="{x:.1f}" y="{4 + plot_h - h:.1f}" width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" '
                         f'fill="{color}" fill-opacity="0.55"><title>{_esc(kind)}: {c} tokens in '
                         f"[{edges[i]:.3g}, {edges[i + 1]:.3g})</title></rect>")
    parts.append(f'<line x1="{pad_left}" y1="{4 + plot_h}" x2="{width - pad_left}" y2="{4 + plot_h}" stroke="#999"/>')
    for i in range(lo, hi + 1):
        exponent = math.log10(edges[i])
        if abs(exponent - round(exponent)) < 1e-9:
            x = pad_left + (i - lo) * bar_w
            parts.append(f'<text x="{x:.1f}" y="{height - 3}" font-size="9" text-anchor="middle" fill="#555">'
                         f"1e{int(round(exponent))}</text>")
    parts.append("</svg>")
    legend = " · ".join(f'<span style="color:{TEXT_COLORS.get(k, "#777")}">■</span> {_esc(k)} ({sum(v)} tokens)'
                        for k, v in histograms.items())
    return "".join(parts) + f'<div class="cap">non-zero activations, log bins (8 per decade): {legend}</div>'


def logits_html(logits: dict[str, dict[str, list[tuple[str, float]]]], norms: dict[str, float] | None = None) -> str:
    """Per model, the top promoted and suppressed tokens side by side; a model whose decoder vector
    is under 1% of the other's is greyed out (its effects are ~0: the latent barely writes there)."""
    if not logits:
        return '<div class="logits-box"><p class="none">no logit effects computed</p></div>'
    norms = norms or {}
    largest = max((v for v in norms.values() if not math.isnan(v)), default=math.nan)
    tables = []
    for model, directions in logits.items():
        promoted, suppressed = directions.get("promoted", []), directions.get("suppressed", [])
        body = []
        for i in range(max(len(promoted), len(suppressed))):
            cells = []
            for items, cls in ((promoted, "pos"), (suppressed, "neg")):
                if i < len(items):
                    token, value = items[i]
                    cells.append(f'<td class="tokcell">{_esc(show_token(token))}</td>'
                                 f'<td class="{cls}">{value:+.3f}</td>')
                else:
                    cells.append("<td></td><td></td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        norm = norms.get(model, math.nan)
        faint = not math.isnan(norm) and largest > 0 and norm < 0.01 * largest
        note = f" (‖d_{_esc(model)}‖ = {norm:.2g}: the latent barely writes here)" if faint else ""
        tables.append(f'<table class="logit{" faint" if faint else ""}" data-model="{_esc(model)}"><caption>'
                      f"{_esc(model)}: promoted · suppressed{note}</caption><tbody>{''.join(body)}</tbody></table>")
    return ('<div class="logits-box"><div class="logits">' + "".join(tables) + '</div><div class="cap">direct logit '
            "effect per unit of activation through each model's unembedding (final norm weight folded, centred over "
            "the vocabulary)</div></div>")


def _facts_html(facts: dict[str, object]) -> str:
    rows = []
    for key, (label, _fmt, tip) in FACT_FORMATS.items():
        if key in facts and facts[key] not in ("", None):
            rows.append(f'<tr title="{_esc(tip)}"><td class="k">{_esc(label)}</td>'
                        f'<td class="v">{_esc(format_fact(key, facts[key]))}</td></tr>')
    return f'<table class="facts">{"".join(rows)}</table>'


def show_token(token: str) -> str:
    """A token as a cell shows it: whitespace escaped (`␣` for a space, `\\n`, `\\t`; other control
    characters as Python escapes), so a space or newline token is never a blank cell."""
    if not token:
        return "∅"
    escaped = repr(token)[1:-1].replace("\\'", "'")
    return escaped.replace(" ", "␣")


def _search_text(card: LatentCard, section: str) -> str:
    """What the search box matches by default: the index's own fields (latent, class, section, the
    logit-effect tokens, raw and as shown), not the contexts' text."""
    tokens = [t for dirs in card.logits.values() for items in dirs.values() for t, _ in items]
    words = [f"latent {card.latent}", card.latent_class, section, *tokens, *map(show_token, tokens)]
    return " ".join(words).lower()


def _context_text(card: LatentCard) -> str:
    """The top contexts' text (matched only with "also search contexts")."""
    return "".join(t for exs in card.examples.values() for ex in exs[:3] for t in ex.tokens).lower()


def card_html(card: LatentCard, section: str, text_kinds: Sequence[str]) -> str:
    peak = max((max(ex.activations, default=0.0) for exs in card.examples.values() for ex in exs), default=0.0)
    color = CLASS_COLORS.get(card.latent_class, "#666")
    parts = [f'<section class="card" id="latent-{card.latent}" data-latent="{card.latent}" '
             f'data-search="{_esc(_search_text(card, section))}" data-context="{_esc(_context_text(card))}">',
             f'<header><h3>Latent {card.latent}</h3><span class="badge" style="background:{color}">'
             f"{_esc(card.latent_class)}</span><span>{_esc(section)}</span><a href=\"#index\">↑ index</a></header>",
             '<div class="top">', _facts_html(card.facts),
             f'<div class="hist">{histogram_svg({k: v for k, v in card.histograms.items() if v})}</div>',
             logits_html(card.logits, {m: _number(card.facts.get(f"decoder_norm_{m}")) for m in card.logits}),
             "</div>", _key_html(peak), '<div class="cols">']
    for kind in text_kinds:
        examples = card.examples.get(kind, [])
        parts.append(f'<div class="col" data-text="{_esc(kind)}"><h4>{_esc(kind)} text: top {len(examples)} '
                     "contexts</h4>")
        parts.extend(example_html(ex, peak) for ex in examples)
        if not examples:
            parts.append('<p class="none">never fires here</p>')
        parts.append("</div>")
    parts.append("</div></section>")
    return "\n".join(parts)


def own_model(card: LatentCard) -> str:
    """The model whose decoder vector is the larger (r ≥ 0.5: tuned), whose logit effects the index lists."""
    r = _number(card.facts.get("relative_norm"))
    return "base" if not math.isnan(r) and r < 0.5 else "tuned"


def _index_row(card: LatentCard, section: str) -> str:
    own = own_model(card)
    top_tokens = card.logits.get(own, {}).get("promoted", [])
    values = {"latent": card.latent, "section": section.split(" (")[0], "class": card.latent_class,
              "top_token": top_tokens[0][0] if top_tokens else "", **card.facts}
    cells = []
    for key, _label in INDEX_COLUMNS:
        value = values.get(key, "")
        if key == "latent":
            shown = f'<a href="#latent-{card.latent}">{card.latent}</a>'
        elif key in FACT_FORMATS:
            shown = _esc(format_fact(key, value))
        else:
            shown = _esc(show_token(value) if key == "top_token" and value else value)
        number = _number(value)
        sort_value = value if math.isnan(number) else number
        cls = ' class="l"' if key in ("section", "class", "top_token") else ""
        cells.append(f'<td{cls} data-value="{_esc(sort_value)}">{shown}</td>')
    return (f'<tr data-latent="{card.latent}" data-search="{_esc(_search_text(card, section))}" '
            f'data-context="{_esc(_context_text(card))}">'
            + "".join(cells) + "</tr>")


def render_latents_html(sections: dict[str, list[LatentCard]], *, title: str, intro: str = "",
                        text_kinds: Sequence[str] = ("general", "reasoning")) -> str:
    """The page: toolbar (search), index of every card, then a section per group with its cards."""
    n_cards = sum(len(cards) for cards in sections.values())
    header = ''.join(f'<th data-key="{key}" class="{"l" if key in ("section", "class", "top_token") else ""}">'
                     f"{_esc(label)}</th>" for key, label in INDEX_COLUMNS)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{_esc(title)}</h1>"]
    if intro:
        parts.append(f'<p class="intro">{_esc(intro)}</p>')
    parts.append('<div class="toolbar"><input id="search" type="search" placeholder="filter: a token, a class, '
                 '#latent id" aria-label="filter latents"><label><input id="in-contexts" type="checkbox"> '
                 f'also search contexts</label><span id="count">{n_cards} of {n_cards} latents</span></div>')
    parts.append(f'<h2 id="index">Index ({n_cards} latents; click a column to sort)</h2>'
                 f'<table class="index"><thead><tr>{header}</tr></thead><tbody>')
    parts.extend(_index_row(card, section) for section, cards in sections.items() for card in cards)
    parts.append("</tbody></table>")
    for section, cards in sections.items():
        parts.append(f"<h2>{_esc(section)} ({len(cards)})</h2>")
        if not cards:
            parts.append('<p class="none">no live latent of this kind</p>')
        parts.extend(card_html(card, section, text_kinds) for card in cards)
    parts.append(f"<script>{_JS}</script></body></html>\n")
    return "\n".join(parts)

