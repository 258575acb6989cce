"""The "Parallel instances" slider."""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from labkit.errors import ConfigError

__all__ = ("InstanceSlider",)


class InstanceSlider(w.HBox):  # type: ignore[misc]
    """An integer slider "Parallel instances" from 1 to ``max``.

    Above 1 it shows ``Nx`` beside the slider and a short note that the results
    will be averaged over the instances. Observe or read :attr:`value` like any
    ipywidgets slider.

    Args:
        max: The largest number of instances offered (at least 1).
        value: The initial number of instances.

    Raises:
        ConfigError: If ``max`` is below 1 or ``value`` is outside 1..``max``.
    """

    def __init__(self, max: int = 5, value: int = 1, **kwargs: Any) -> None:
        if not isinstance(max, int) or max < 1:
            raise ConfigError("max", max, "an integer >= 1")
        if not isinstance(value, int) or not 1 <= value <= max:
            raise ConfigError("value", value, f"an integer from 1 to {max}")
        self.slider = w.IntSlider(
            value=value,
            min=1,
            max=max,
            step=1,
            description="Parallel instances",
            style={"description_width": "initial"},
            continuous_update=True,
        )
        self.badge = w.HTML()
        self.note = w.HTML()
        super().__init__([self.slider, self.badge, self.note], **kwargs)
        self.add_class("labkit-instance-slider")
        self.slider.observe(self._show, names="value")
        self._show()

    @property
    def value(self) -> int:
        """The chosen number of instances."""
        return int(self.slider.value)

    @value.setter
    def value(self, value: int) -> None:
        self.slider.value = value

    def _show(self, _change: object = None) -> None:
        n = self.value
        if n > 1:
            self.badge.value = f"<b>{n}x</b>"
            self.note.value = f"<i>{n} instances run in parallel; results will be averaged.</i>"
        else:
            self.badge.value = ""
            self.note.value = ""
