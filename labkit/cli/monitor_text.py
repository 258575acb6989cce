"""The block ``labkit monitor`` prints: the machine, the GPU fleet, and the
experiments running (or left interrupted) in a store."""

from __future__ import annotations

from pathlib import Path

from labkit.cli.stored import open_to_read

__all__ = ("monitor_text",)

_STATES = (
    ("running", "running"),
    ("interrupted", "interrupted (their process died; resume=True picks them up)"),
)


def monitor_text(db: str) -> str:
    """One block of text: a line for the machine, one per GPU, the store's runs."""
    import psutil

    from labkit.gpu import GPUPool

    lines = [
        f"machine: cpu {psutil.cpu_percent(interval=0.1):.0f}% of {psutil.cpu_count()} cores, "
        f"memory {psutil.virtual_memory().percent:.0f}% used"
    ]
    gpus = GPUPool().stats().gpus
    if not gpus:
        lines.append("GPUs: none found (no NVIDIA driver, or nvidia-ml-py not installed)")
    for gpu in gpus:
        used = "N/A" if gpu.memory_used_mb is None else f"{gpu.memory_used_mb}"
        total = "N/A" if gpu.memory_total_mb is None else f"{gpu.memory_total_mb}"
        load = "N/A" if gpu.utilization is None else f"{gpu.utilization:.0%}"
        lines.append(f"GPU {gpu.index} {gpu.name}: memory {used}/{total} MB, load {load}")
    if Path(db).exists():
        lines += _experiment_lines(db)
    return "\n".join(lines)


def _experiment_lines(db: str) -> list[str]:
    """The running experiments of ``db`` (a heading even when none), then the
    interrupted ones (only when some are)."""
    with open_to_read(db) as store:
        frame = store.experiments()
    lines = []
    for status, heading in _STATES:
        rows = frame[frame["status"] == status] if not frame.empty else frame
        if status == "interrupted" and rows.empty:
            continue
        lines.append(f"experiments {heading} in {db}: {len(rows)}")
        for row in rows.to_dict("records"):
            done = int(row["succeeded"]) + int(row["failed"])
            lines.append(f"  {row['id']} {row['name']}: {done}/{row['instances']} instances done")
    return lines
