"""Instance seeds: the one way to seed an instance (``ctx.seed``).

Every instance of an experiment gets an int seed derived from the run's base seed
(``run_experiment(..., seed=0)``) and its index. The derivation is a bijection of
the index for a given base seed, so, by construction and not by chance:

- different indices of one experiment get different seeds (indices continue across
  resume, ``instances="auto"`` and racing rounds, so seeds stay unique there too);
- instance *i* of every configuration of a sweep gets the same seed (the sweep
  passes one base seed to every trial): common random numbers, so two
  configurations can be compared pair by pair;
- different base seeds give different seeds for the same index.

Seeds are 32-bit unsigned ints (0 to 2**32 - 1), which every common generator
accepts: ``random.Random``, ``numpy.random.default_rng``, scikit-learn's
``random_state``, ``torch.manual_seed``. Neighbouring indices get unrelated seeds
(the index goes through an integer hash), not ``seed``, ``seed + 1``, ...
"""

from __future__ import annotations

from labkit._checks import check

__all__ = ("MAX_SEED", "check_seed", "instance_seed")

MAX_SEED = 2**32 - 1
"""The largest base seed, and the largest instance seed."""

_MASK = 0xFFFFFFFF
_SALT = 0x9E3779B9  # keeps base 0, index 0 off the hash's fixed point (0 -> 0)


def _mix(value: int) -> int:
    """MurmurHash3's 32-bit finalizer: a bijection of 32-bit ints that spreads every bit."""
    value ^= value >> 16
    value = (value * 0x85EBCA6B) & _MASK
    value ^= value >> 13
    value = (value * 0xC2B2AE35) & _MASK
    value ^= value >> 16
    return value


def instance_seed(base: int, index: int) -> int:
    """The seed of instance ``index`` in a run whose base seed is ``base``.

    ``mix((mix(base XOR salt) + index) mod 2**32)``, where ``mix`` is a bijection of 32-bit
    ints: for one base, indices below 2**32 never share a seed; for one index,
    different bases never share a seed.

    Args:
        base: The run's base seed, 0 to :data:`MAX_SEED`.
        index: The instance's index, from 0.

    Returns:
        An int from 0 to :data:`MAX_SEED`.
    """
    return _mix((_mix((base ^ _SALT) & _MASK) + index) & _MASK)


def check_seed(seed: object) -> int:
    """``seed`` as a base seed, or a ConfigError naming it.

    Raises:
        ConfigError: ``seed`` is not an int from 0 to :data:`MAX_SEED`.
    """
    check(
        isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED,
        "seed",
        seed,
        f"an int from 0 to {MAX_SEED} (the base seed instances derive ctx.seed from)",
    )
    assert isinstance(seed, int)
    return seed
