"""Sandboxes: where an experiment instance's commands run, and the pool that reuses them.

:class:`LocalSandbox` (subprocesses in a private directory, the default),
:class:`E2BSandbox` (E2B cloud VMs; needs the ``e2b`` extra, imported on first
use) and :class:`FakeSandbox` (scripted, for tests) all follow the
:class:`Sandbox` protocol; :class:`SandboxPool` keeps started ones warm.
"""

from __future__ import annotations

from labkit.sandbox.base import TIMEOUT_EXIT_CODE, CommandResult, ResourceSample, Sandbox
from labkit.sandbox.e2b import E2BSandbox
from labkit.sandbox.fake import FakeSandbox
from labkit.sandbox.local import LocalSandbox
from labkit.sandbox.pool import SandboxFactory, SandboxPool, SandboxPoolStats

__all__ = (
    "TIMEOUT_EXIT_CODE",
    "CommandResult",
    "E2BSandbox",
    "FakeSandbox",
    "LocalSandbox",
    "ResourceSample",
    "Sandbox",
    "SandboxFactory",
    "SandboxPool",
    "SandboxPoolStats",
)
