"""Run a graph of dependent tasks: each starts once the tasks it depends on succeeded.

``await run_graph({"data": (load, []), "model": (train, ["data"]), ...})`` checks the
whole graph first (an unknown name or a cycle is refused before anything runs),
then submits every node to one :class:`labkit.Runner`: independent branches run in
parallel under its concurrency cap, and a node whose dependency failed is not run
(its result carries :class:`labkit.errors.DependencyFailed`).

A node's function is called with its dependencies' values, positionally, in the
order its dependency list names them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from labkit.errors import ConfigError, GraphError
from labkit.runner import Runner, TaskHandle, TaskResult

__all__ = ("Graph", "run_graph", "topological_order")

Graph = Mapping[str, tuple[Callable[..., Any], Iterable[str]]]


def topological_order(dependencies: Mapping[str, list[str]]) -> list[str]:
    """The names with every dependency before its dependents (input order kept).

    Raises:
        GraphError: If a dependency names no task, or the graph has a cycle.
    """
    unknown = {
        name: [dep for dep in deps if dep not in dependencies]
        for name, deps in dependencies.items()
        if any(dep not in dependencies for dep in deps)
    }
    if unknown:
        raise GraphError(unknown=unknown)
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: placed
    path: list[str] = []

    def visit(name: str) -> None:
        mark = state.get(name)
        if mark == 2:
            return
        if mark == 1:
            raise GraphError(cycle=[*path[path.index(name) :], name])
        state[name] = 1
        path.append(name)
        for dep in dependencies[name]:
            visit(dep)
        path.pop()
        state[name] = 2
        order.append(name)

    for name in dependencies:
        visit(name)
    return order


async def run_graph(graph: Graph, **runner_options: Any) -> dict[str, TaskResult[Any]]:
    """Run every node of ``graph`` once its dependencies succeeded.

    Args:
        graph: ``{name: (fn, [dependency names])}``; ``fn`` may be async or sync and
            is called with the dependencies' values in the listed order.
        **runner_options: Options of :class:`labkit.Runner` (``max_concurrency``,
            ``retry``, ``timeout``, ``rate_limit``, ``on_event``...).

    Returns:
        One :class:`TaskResult` per node, keyed by name, in topological order; a
        result's ``item`` is its node's name.

    Raises:
        GraphError: If a dependency names no node or the graph has a cycle; nothing
            runs then.
        ConfigError: If ``graph`` is not a mapping or a node is not a
            ``(callable, dependencies)`` pair.
    """
    if not isinstance(graph, Mapping):
        raise ConfigError("graph", graph, "a dict {name: (fn, [dependency names])}")
    dependencies: dict[str, list[str]] = {}
    functions: dict[str, Callable[..., Any]] = {}
    for name, node in graph.items():
        if not (isinstance(node, tuple) and len(node) == 2 and callable(node[0])):
            raise ConfigError(f"graph[{name!r}]", node, "a pair (fn, [dependency names])")
        fn, deps = node
        functions[name] = fn
        dependencies[name] = [deps] if isinstance(deps, str) else list(deps)
    order = topological_order(dependencies)

    async with Runner(**runner_options) as runner:
        handles: dict[str, TaskHandle[Any]] = {}
        for name in order:
            upstream = [handles[dep] for dep in dependencies[name]]
            handles[name] = runner.submit(
                _with_inputs(functions[name], upstream), depends_on=upstream, label=name
            )
        results = {name: await handles[name] for name in order}
    for name, result in results.items():
        result.item = name
    return results


def _with_inputs(fn: Callable[..., Any], upstream: list[TaskHandle[Any]]) -> Callable[[], Any]:
    """``fn`` called with the upstream values (known to have succeeded by then)."""
    from labkit.executors import is_async_callable

    if is_async_callable(fn):

        async def call_async() -> Any:
            values = [(await handle).value for handle in upstream]
            return await fn(*values)

        return call_async

    def call_sync() -> Any:
        values = [handle.result().value for handle in upstream]
        return fn(*values)

    return call_sync
