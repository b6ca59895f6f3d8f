"""Loaders of the real video QA benchmarks.

Video-MME, MLVU, LongVideoBench, EgoSchema, NExT-QA and VNBench, registered lazily by
``tokenred.builtin.datasets``.
"""
