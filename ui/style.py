"""The page's look: a Gradio theme and a little CSS for the HTML that :mod:`ui.render` writes."""

from __future__ import annotations

PAGE_CSS = """
.ls-header {display:flex; align-items:baseline; gap:.8rem; flex-wrap:wrap; padding:.2rem 0 .4rem}
.ls-logo {font-size:1.6rem; font-weight:700; letter-spacing:-.02em}
.ls-tag {color:var(--body-text-color-subdued)}
.ls-sub {margin-left:auto; color:var(--body-text-color-subdued); font-size:.85rem}
.ls-notice {background:#fff4e5; color:#7a3e00; border:1px solid #f0a64b; border-left:6px solid #e8590c;
            border-radius:8px; padding:.7rem 1rem; font-weight:600}
.ls-muted {color:var(--body-text-color-subdued); font-size:.9rem}
.ls-error {color:#c92a2a; font-weight:600}
.ls-stats {display:grid; grid-template-columns:repeat(3, minmax(0, 1fr)); gap:.5rem}
.ls-stat {border:1px solid var(--border-color-primary); border-radius:8px; padding:.45rem .6rem;
          background:var(--background-fill-secondary)}
.ls-stat-v {font-size:1.15rem; font-weight:700; font-variant-numeric:tabular-nums}
.ls-stat-l {font-size:.75rem; color:var(--body-text-color-subdued); text-transform:uppercase; letter-spacing:.04em}
.ls-progress {padding:.3rem 0; font-size:.92rem}
.ls-bar {height:8px; border-radius:4px; background:var(--background-fill-secondary);
         border:1px solid var(--border-color-primary); margin-top:.35rem; overflow:hidden}
.ls-bar-fill {height:100%; background:var(--color-accent); transition:width .4s}
.ls-evidence {margin-top:.4rem; border-top:1px dashed var(--border-color-primary); padding-top:.4rem}
.ls-ev-title {font-size:.78rem; text-transform:uppercase; letter-spacing:.05em; color:var(--body-text-color-subdued);
              margin-bottom:.3rem}
.ls-ev-row {display:flex; flex-wrap:wrap; gap:.5rem; align-items:flex-start}
figure.ls-ev {margin:0; width:104px; text-align:center; font-size:.78rem; line-height:1.25}
.ls-ev img.ls-thumb {width:96px; height:72px; object-fit:cover; border-radius:6px; display:block; margin:0 auto .2rem;
                     border:2px solid var(--border-color-primary)}
.ls-ev-window img.ls-thumb {border-color:var(--color-accent)}
div.ls-thumb.ls-note {width:96px; height:72px; margin:0 auto .2rem; font-size:.7rem; overflow:hidden; border-radius:6px;
                      background:var(--background-fill-secondary); padding:.2rem}
div.ls-thumb.ls-speech {border:2px solid #5c7cfa; font-style:italic}
.ls-transcript ul {margin:.2rem 0; padding-left:1.1rem; max-height:12rem; overflow-y:auto; font-size:.9rem}
.ls-transcript li {margin:.12rem 0}
.ls-ts {font-variant-numeric:tabular-nums}
.ls-more {align-self:center; color:var(--body-text-color-subdued)}
.ls-stop {color:var(--body-text-color-subdued)}
ul.ls-rules, ul.ls-alerts {margin:.2rem 0; padding-left:1.1rem; max-height:11rem; overflow-y:auto}
.ls-rules ol {margin:.2rem 0; padding-left:1.4rem; max-height:11rem; overflow-y:auto}
.ls-rules-count, .ls-queued, .ls-busy {color:var(--body-text-color-subdued); font-size:.85rem}
ul.ls-alerts li {margin:.15rem 0}
"""


def page_theme():
    """The Gradio theme of the page."""
    import gradio as gr

    return gr.themes.Soft(primary_hue="indigo", secondary_hue="slate")
