"""The "Parallel instances" slider, and its default bounds from the machine."""

from __future__ import annotations

import os
from typing import Any

import ipywidgets as w

from labkit.errors import ConfigError

__all__ = ("MAX_DEFAULT_INSTANCES", "InstanceSlider", "default_max_instances")

MAX_DEFAULT_INSTANCES = 64
"""The largest default maximum: more instances are a deliberate ``max_instances=``."""


def default_max_instances(sandbox_pool: Any = None, cpus: int | None = None) -> int:
    """The instance slider's default maximum on this machine.

    With a sandbox pool, its ``max_size`` (each instance holds one sandbox;
    more would queue for one).
    Otherwise 4 instances per CPU core (instances mostly wait: on sleeps, I/O,
    a subprocess), at least 8 and at most :data:`MAX_DEFAULT_INSTANCES`.

    Args:
        sandbox_pool: The pool instances take sandboxes from, if any.
        cpus: CPU cores (default: ``os.cpu_count()``).

    Returns:
        An integer >= 1.
    """
    size = getattr(sandbox_pool.stats(), "max_size", None) if sandbox_pool is not None else None
    if isinstance(size, int) and size >= 1:
        return size
    cores = cpus if cpus is not None else os.cpu_count() or 1
    return max(8, min(4 * cores, MAX_DEFAULT_INSTANCES))


class InstanceSlider(w.HBox):  # type: ignore[misc]
    """An integer slider "Parallel instances" from 1 to ``max``.

    Above 1 it shows ``Nx`` beside the slider and a short note that the
    instances run in parallel and their results are averaged. Observe or read :attr:`value` like any
    ipywidgets slider.

    Args:
        max: The largest number of instances offered (at least 1); default:
            :func:`default_max_instances` (from the machine's CPU cores).
        value: The initial number of instances.

    Raises:
        ConfigError: If ``max`` is below 1 or ``value`` is outside 1..``max``.
    """

    def __init__(self, max: int | None = None, value: int = 1, **kwargs: Any) -> None:
        if max is None:
            max = default_max_instances()
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
            self.note.value = "<i>run in parallel; their results are averaged.</i>"
        else:
            self.badge.value = ""
            self.note.value = ""
