"""Pure computations on a grid model: no I/O, no clocks, no messaging."""
