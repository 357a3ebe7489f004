"""An HTML document as (tag, attributes) and text nodes, for tests of rendered pages (the status
page's unit tests read the renderer's output; its integration test reads Chromium's DOM)."""

from __future__ import annotations

from html.parser import HTMLParser


class Dom(HTMLParser):
    """Every element as (tag, attributes) and every text node, in document order."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.texts: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    handle_startendtag = handle_starttag

    def handle_data(self, data):
        self.texts.append(data)

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str):
        """Elements of `tag` with class `cls`; ``drift_id=`` matches ``data-drift-id`` (or
        ``drift-id``)."""
        def value(a: dict[str, str], key: str) -> str | None:
            name = key.replace("_", "-")
            return a.get(name, a.get(f"data-{name}"))

        return [a for t, a in self.elements
                if (tag is None or t == tag) and (cls is None or cls in a.get("class", "").split())
                and all(value(a, k) == v for k, v in attrs.items())]
