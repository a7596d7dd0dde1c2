"""The report's sentences as HTML that no name of a study file can turn into markup.

A study file names its study, datasets, losses, miners, samplers and networks (import paths
``pkg.mod:Class`` included) and gives their arguments; all of it reaches the report's sentences. Shown
as Markdown, any HTML in such a name would go into report.html as it is (nbconvert passes raw HTML of
Markdown through), so a ``<script>`` in a study's name would run in the reader's browser. The
sentences are therefore rendered here, in the kernel, with nbconvert's own Markdown renderer told to
escape raw HTML and to drop links to ``javascript:`` and other harmful protocols, and shown as HTML:
whatever the text holds is shown as text. MathJax is told to leave the result alone, so a name with
dollar signs is not typeset either. The one piece of markup the sentences need, the letter of a group
of identical cells, is written ``^a^`` (Markdown's superscript).
"""

from __future__ import annotations

from functools import lru_cache

# MathJax 2 skips elements of the first class, MathJax 3 those of the second.
NO_MATH = "tex2jax_ignore mathjax_ignore"


@lru_cache(maxsize=1)
def _renderer():
    from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath, import_plugin

    plugins = [import_plugin(name) for name in (*MarkdownWithMath.DEFAULT_PLUGINS, "superscript")]
    return MarkdownWithMath(renderer=IPythonRenderer(escape=True, allow_harmful_protocols=False), plugins=plugins)


def markdown_html(text: str) -> str:
    """``text`` (Markdown) as HTML in which any HTML the text holds is escaped and shown as written."""
    return f'<div class="{NO_MATH}">{_renderer().render(str(text)).strip()}</div>'


def show_markdown(text: str) -> None:
    """Show ``text`` (Markdown) in the notebook as :func:`markdown_html` renders it."""
    from IPython.display import HTML, display

    display(HTML(markdown_html(text)))
