"""MkDocs hook: show the Sphinx roles of the docstrings (:class:`X`, :func:`~a.b.f`) as plain code.

The package's docstrings cross-reference with Sphinx roles; mkdocstrings renders Markdown, where
``:class:`X``` would show the role's name before the code. This drops the role and a leading ``~``.
"""

import re

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|const)::?(<code>)~?")


def on_page_content(html: str, **kwargs) -> str:
    return _ROLE.sub(r"\1", html)
