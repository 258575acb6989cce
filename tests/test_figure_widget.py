"""The live chart's figure widget: its views stop listening once removed from the page.

plotly's own front-end module is loaded in Debian's Chromium with a model that
behaves as anywidget's (``get``, ``set``, ``on``, ``off``); a view is rendered,
removed, and the model then updated as a run still drawing would update it. plotly's
module throws there (the error the widget manager logs as "Error setting state");
labkit's wrapped module does not, and its views' listeners are gone.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("plotly")

from labkit.widgets.figure import PLOTLY_MODULE, WRAPPED, LiveFigure, wrap_module
from tests.test_browser import CHROMIUM_ARGS

WRAPPER = "export default {wrapped: LABKIT_PLOTLY_WIDGET};\n"


def test_the_default_export_is_wrapped_and_the_rest_is_kept() -> None:
    module = "const a = 1, b = () => 2;\nexport{a as A,b as default};\n/*! license */\n"
    wrapped = wrap_module(module, WRAPPER)
    assert wrapped == (
        "const a = 1, b = () => 2;\nexport{a as A};\n"
        "export default {wrapped: b};\n\n/*! license */\n"
    )


@pytest.mark.parametrize(
    "module",
    [
        "const a = 1;\nexport{a as A};\n",  # no default export
        "export{a as default};\nconsole.log(1);\n",  # code after the clause
        "export default function () {}\n",  # not a clause
    ],
)
def test_a_module_not_ending_in_a_default_export_clause_is_left_alone(module: str) -> None:
    assert wrap_module(module, WRAPPER) is None


def test_the_installed_plotly_module_is_wrapped() -> None:
    figure = LiveFigure()
    assert WRAPPED
    assert "labkitFigure" in figure._esm
    assert figure._esm.startswith(PLOTLY_MODULE[:1000])


def test_without_anywidget_the_widgets_import_and_the_chart_says_what_to_install() -> None:
    script = (
        "import sys\n"
        "sys.modules['anywidget'] = None  # as if it were not installed\n"
        "import labkit.widgets as widgets\n"
        "from labkit.widgets.figure import WRAPPED\n"
        "assert not WRAPPED\n"
        "try:\n"
        "    widgets.LiveTimeline()\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "install anywidget" in done.stdout


DRIVE = """async ([source]) => {
    const url = URL.createObjectURL(new Blob([source], {type: "text/javascript"}));
    const module = await import(url);
    const listeners = new Map();
    const state = {
        _widget_data: [{type: "scatter", x: [0, 1, 2], y: [1, 3, 2]}],
        _widget_layout: {}, _config: {}, _last_layout_edit_id: 0, _last_trace_edit_id: 0,
    };
    const model = {
        get: name => state[name],
        set(name, value) {
            state[name] = value;
            for (const callback of [...(listeners.get("change:" + name) || [])]) callback();
        },
        save_changes() {}, send() {},
        on(name, callback) {
            if (!listeners.has(name)) listeners.set(name, []);
            listeners.get(name).push(callback);
        },
        off(name, callback) {
            const list = listeners.get(name) || [];
            if (list.includes(callback)) list.splice(list.indexOf(callback), 1);
        },
    };
    const count = () => [...listeners.values()].reduce((sum, list) => sum + list.length, 0);
    const widget = typeof module.default === "function" ? await module.default() : module.default;
    await widget.initialize?.({model});
    const before = count();
    const el = document.createElement("div");
    el.style.width = "600px";
    el.style.height = "300px";
    document.body.appendChild(el);
    const drawn = new Promise(resolve =>
        document.addEventListener("plotlywidget-after-render", resolve, {once: true}));
    const cleanup = await widget.render({model, el});
    await drawn;
    const rendered = count();
    const line = el.querySelector(".scatterlayer .trace path.js-line").getAttribute("d");
    await cleanup();
    el.remove();
    let error = null;
    try {
        model.set("_py2js_restyle", {
            restyle_data: {y: [[2, 1, 3]]}, restyle_traces: [0],
            trace_edit_id: 1, layout_edit_id: 1,
        });
    } catch (thrown) {
        error = String(thrown);
    }
    return {before, rendered, after: count(), line, error};
}"""


def _drive(module: str) -> dict[str, Any]:
    """Render a view of ``module`` in Chromium, remove it, and update the model."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            result: dict[str, Any] = page.evaluate(DRIVE, [module])
            return result
        finally:
            browser.close()


@pytest.mark.browser
@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_a_removed_view_stops_listening_where_plotlys_own_throws() -> None:
    plotly = _drive(PLOTLY_MODULE)
    # plotly's view drew, and redraws into its purged element after its removal.
    assert plotly["line"]
    assert plotly["after"] == plotly["rendered"] > plotly["before"]
    assert plotly["error"] is not None and "length" in plotly["error"]

    labkit = _drive(str(LiveFigure()._esm))
    assert labkit["line"] == plotly["line"]  # the same chart
    assert labkit["rendered"] == plotly["rendered"]
    assert labkit["after"] == labkit["before"]  # the view's listeners went with it
    assert labkit["error"] is None
