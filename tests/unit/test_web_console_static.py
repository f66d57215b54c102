"""The console's static side without a browser: table paging of the JSON API (page_of), the latency
window of the overview, and the rule that the page's script never builds HTML from strings."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from pgdoorman.web import ui
from pgdoorman.web.api import page_of

TABLE = {
    "columns": [{"name": "client_id", "type": "string"}, {"name": "application_name", "type": "string"},
                {"name": "query_count", "type": "number"}],
    "rows": [{"client_id": f"#c{i}", "application_name": "psql" if i % 3 else "Batch", "query_count": i % 7}
             for i in range(10_000)],
}


def test_page_of_filters_sorts_and_slices() -> None:
    assert page_of(TABLE, {}) is TABLE  # no parameters: the whole table, as before
    page = page_of(TABLE, {"filter": ["batch"], "sort": ["-query_count"], "offset": ["100"], "limit": ["50"]})
    assert page["total"] == len([r for r in TABLE["rows"] if r["application_name"] == "Batch"])
    assert page["offset"] == 100 and len(page["rows"]) == 50 and page["columns"] == TABLE["columns"]
    assert all(r["application_name"] == "Batch" for r in page["rows"])
    counts = [r["query_count"] for r in page_of(TABLE, {"sort": ["-query_count"], "limit": ["10000"]})["rows"]]
    assert counts == sorted(counts, reverse=True)
    last = page_of(TABLE, {"offset": ["9990"], "limit": ["100"]})
    assert [r["client_id"] for r in last["rows"]] == [f"#c{i}" for i in range(9990, 10_000)]
    assert page_of(TABLE, {"filter": ["no such thing"]})["total"] == 0


@pytest.mark.parametrize("params", [{"sort": ["nope"]}, {"limit": ["-1"]}, {"offset": ["x"]}])
def test_page_of_refuses_bad_parameters(params: dict[str, list[str]]) -> None:
    with pytest.raises(ValueError):
        page_of(TABLE, params)


def test_the_page_never_builds_html_from_strings() -> None:
    script = ui.asset("app.js").decode()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "setAttribute(\"style\""):
        assert sink not in script, sink
    html = ui.asset("index.html").decode()
    assert not re.search(r"<script>|\son\w+=|style=", html)  # nothing inline: the CSP allows none
    assert "script-src 'self'" in ui.CSP and "unsafe-inline" not in ui.CSP


def test_assets_ship_inside_the_package() -> None:
    static = resources.files("pgdoorman.web").joinpath("static")
    names = {p.name for p in static.iterdir()}
    assert {"index.html", *ui.ASSETS} <= names
    assert ui.static("../api.py") is None and ui.static("index.html") is None
