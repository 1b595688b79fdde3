"""Fault location, isolation and service restoration (FLISR), as pure functions of a grid model.

* :mod:`.location` (FLOC): the faulted switching section from the feeder-head trip and the fault
  indicators, then the distance on the line from the fault records (impedance method, refined by
  voltages measured inside the section).
* :mod:`.isolation` (FISO): the switches to open so the smallest zone around the fault is dead.
* :mod:`.restoration` (SRES): the switching plan that re-energizes the most healthy load within
  thermal and voltage limits, with the fewest operations.

Nothing here talks to devices or the broker: the coordinator service
(:mod:`openfeeder.services.flisr`) feeds these functions and carries out their plans.
"""
