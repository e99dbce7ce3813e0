"""MkDocs hook (mkdocs.yml ``hooks:``): the numbers in the pages' prose, read from the committed CSVs they name
(:func:`flownar.docsite.fill_figures`)."""

from flownar.docsite import fill_figures


def on_page_markdown(markdown, page, config, files):
    return fill_figures(markdown)
