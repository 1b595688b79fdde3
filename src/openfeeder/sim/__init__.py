"""The digital twin: a grid that behaves like one, so the platform runs and is tested without hardware.

- :mod:`~openfeeder.sim.clock`: the one domain clock (real time, accelerated, as fast as possible).
- :mod:`~openfeeder.sim.scenario`: TOML scenarios (grid, time span, devices, events); shipped ones in
  ``scenarios/``.
- :mod:`~openfeeder.sim.profiles`: seeded load (per customer class), PV and EV time series.
- :mod:`~openfeeder.sim.world`: the physical grid devices sense and operate (:class:`SolvedWorld`).
- :mod:`~openfeeder.sim.placements`, :mod:`~openfeeder.sim.measurements`,
  :mod:`~openfeeder.sim.sources`: where devices sit, what their instruments report, and the data
  source a meter agent reads.
- :mod:`~openfeeder.sim.faults`, :mod:`~openfeeder.sim.segments`: fault timelines with feeder-head
  protection, as piecewise-steady phasor states.
- :mod:`~openfeeder.sim.waveforms`, :mod:`~openfeeder.sim.comtrade`: sampled records and COMTRADE.
- :mod:`~openfeeder.sim.netem`: the emulated network (an MQTT-aware relay).
- :mod:`~openfeeder.sim.twin`: study runs; :mod:`~openfeeder.sim.devices` and
  :mod:`~openfeeder.sim.live`: the twin's platform devices and live runs (the top of ``sim``).
"""
