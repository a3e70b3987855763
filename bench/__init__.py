"""Benchmarks of the product against the vendor guide's naive integration, on the local world.

Run with ``make bench`` (or ``python -m bench``). Each figure module measures the product and the
baseline in the same run on the same :class:`~localworld.world.LocalWorld` and reports their
ratio, because absolute times on a shared machine are noisy. ``bench/results.json`` and
``docs/benchmarks.md`` are written from one run.
"""
