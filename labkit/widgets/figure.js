// labkit's wrapper around plotly's FigureWidget module (appended to plotly's bundle).
//
// plotly's views listen on the model given to `initialize`, which outlives them, and
// never stop: a view removed from the page (its output cleared, its cell run again)
// keeps redrawing on every update into its purged element, and the widget manager
// logs "Error setting state" for each. Here each view's listeners are noted while it
// renders and removed with it. `LABKIT_PLOTLY_WIDGET` is plotly's default export.
const labkitPlotlyWidget = LABKIT_PLOTLY_WIDGET;

export default async function labkitFigure() {
  const widget =
    typeof labkitPlotlyWidget === "function" ? await labkitPlotlyWidget() : labkitPlotlyWidget;
  let model = null;
  let rendering = null; // the listeners the view being rendered adds, or null
  return {
    ...widget,
    initialize(context) {
      model = context.model;
      const noted = Object.assign({}, model, {
        on(name, callback) {
          rendering?.push([name, callback]);
          model.on(name, callback);
        },
      });
      return widget.initialize?.({ ...context, model: noted });
    },
    render(context) {
      const added = (rendering = []);
      let cleanup;
      try {
        cleanup = widget.render(context);
      } finally {
        rendering = null;
      }
      return async () => {
        for (const [name, callback] of added) model.off(name, callback);
        const done = await cleanup;
        if (typeof done === "function") done();
      };
    },
  };
}
