"""What E2B sandboxes cost: the published per-second rates and :func:`estimate_cost`.

E2B bills each running sandbox per second for the vCPUs and RAM its template
allocates, whatever the sandbox actually uses. The same rates price a plan
(:func:`estimate_cost`) and what a :class:`labkit.SandboxPool` has spent so far
(``SandboxPoolStats.cost_usd``, from each sandbox's ``price_per_second``).
"""

from __future__ import annotations

from labkit._checks import check, is_real

__all__ = (
    "E2B_PRICE_PER_GIB_SECOND",
    "E2B_PRICE_PER_VCPU_SECOND",
    "estimate_cost",
    "price_per_second",
)

E2B_PRICE_PER_VCPU_SECOND = 0.000014
"""E2B's published compute price, USD per vCPU per second (e2b.dev pricing, August 2026)."""

E2B_PRICE_PER_GIB_SECOND = 0.0000045
"""E2B's published memory price, USD per GiB of RAM per second (e2b.dev pricing, August 2026)."""


def price_per_second(
    *,
    vcpus: float = 2.0,
    memory_gib: float = 0.5,
    price_per_vcpu_second: float = E2B_PRICE_PER_VCPU_SECOND,
    price_per_gib_second: float = E2B_PRICE_PER_GIB_SECOND,
) -> float:
    """USD per second for one running sandbox of ``vcpus`` and ``memory_gib``.

    Raises:
        ConfigError: A value is negative or not finite.
    """
    for option, value in (
        ("vcpus", vcpus),
        ("memory_gib", memory_gib),
        ("price_per_vcpu_second", price_per_vcpu_second),
        ("price_per_gib_second", price_per_gib_second),
    ):
        check(is_real(value) and value >= 0, option, value, "a finite number >= 0")
    return vcpus * price_per_vcpu_second + memory_gib * price_per_gib_second


def estimate_cost(
    *,
    instances: int,
    duration: float,
    vcpus: float = 2.0,
    memory_gib: float = 0.5,
    price_per_vcpu_second: float = E2B_PRICE_PER_VCPU_SECOND,
    price_per_gib_second: float = E2B_PRICE_PER_GIB_SECOND,
) -> float:
    """What a run would cost in E2B sandboxes, in US dollars.

    E2B bills each running sandbox per second for the vCPUs and RAM its template
    allocates, whatever it actually uses: ``(vcpus * price_per_vcpu_second +
    memory_gib * price_per_gib_second) * seconds``. The defaults are E2B's
    published rates as of August 2026 (e2b.dev/pricing and the docs page "How do I
    calculate the price of a sandbox?"): USD 0.000014 per vCPU-second and USD
    0.0000045 per GiB-second, for the default template of 2 vCPUs and 512 MiB.
    Prices change: pass your own when they do.

    Args:
        instances: Sandboxes that run at the same time (one per instance).
        duration: Seconds each runs.
        vcpus: vCPUs per sandbox.
        memory_gib: RAM per sandbox, in GiB.
        price_per_vcpu_second: USD per vCPU per second.
        price_per_gib_second: USD per GiB per second.

    Returns:
        The estimated cost in USD.

    Raises:
        ConfigError: A value is negative (or ``instances`` is below 1).
    """
    check(isinstance(instances, int) and instances >= 1, "instances", instances, "an int >= 1")
    check(is_real(duration) and duration >= 0, "duration", duration, "a finite number >= 0")
    per_second = price_per_second(
        vcpus=vcpus,
        memory_gib=memory_gib,
        price_per_vcpu_second=price_per_vcpu_second,
        price_per_gib_second=price_per_gib_second,
    )
    return instances * duration * per_second
