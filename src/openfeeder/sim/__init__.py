"""The digital twin: a grid that behaves like one, so the platform runs and is tested without hardware.

- :mod:`~openfeeder.sim.clock`: the one domain clock (real time, accelerated, as fast as possible).
"""
