"""The self-contained HTML page that the leaderboard (:mod:`xsearch.leaderboard`, :mod:`xsearch.report`) and
``xsearch inspect`` (:mod:`xsearch.failures`) share: inline style, sortable tables, the sort script.

A leaf module: it imports nothing from xsearch, so every page writer can use it without importing another.
"""
from __future__ import annotations

import html

STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin-bottom:1.5em}"
    "th,td{border:1px solid #ccc;padding:4px 10px}td.num{text-align:right;white-space:nowrap}"
    "th{background:#f0f0f0;cursor:pointer;user-select:none}th[aria-sort=ascending]::after{content:' \\25B2'}"
    "th[aria-sort=descending]::after{content:' \\25BC'}table.reported th{background:#fdf3e1}"
    "img{max-width:100%;display:block;margin-bottom:1em}p.note{color:#666}"
)
# Click a header to sort its table by that column (numbers by data-v, missing values last; again to reverse).
SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, _) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var desc = th.getAttribute('aria-sort') !== 'descending';
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', desc ? 'descending' : 'ascending');
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    function key(row) { var c = row.cells[col]; return c.hasAttribute('data-v') ? c.getAttribute('data-v') : c.textContent; }
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === '' || y === '') { return (x === '') - (y === ''); }
      var nx = parseFloat(x), ny = parseFloat(y), r = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return desc ? -r : r;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def table(header: list[str], rows_html: list[str], css: str) -> str:
    """A ``<table class="css">`` with ``header`` cells and the given ``<tr>`` rows (a ``sortable`` table sorts by a
    clicked column, through :data:`SCRIPT`)."""
    head = "".join(f'<th scope="col">{html.escape(h)}</th>' for h in header)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(rows_html) + "\n</tbody></table>"


def page(title: str, body: str, style: str = "") -> str:
    """The whole document: ``title``, :data:`STYLE` followed by ``style``, ``body``, then :data:`SCRIPT`."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}{style}</style></head><body>\n" + body
            + f"\n<script>{SCRIPT}</script>\n</body></html>\n")
