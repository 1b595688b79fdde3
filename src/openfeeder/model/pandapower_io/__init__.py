"""Import and export of pandapower networks (optional dependency: ``openfeeder[pandapower]``).

:func:`from_pandapower` turns a pandapower net into a :class:`GridModel`, :func:`to_pandapower` does
the reverse, and :func:`import_pandapower_json` / :func:`export_pandapower_json` read and write nets
saved with ``pandapower.to_json``. pandapower is imported inside the functions, so the rest of
OpenFeeder runs without it. Both directions work column by column on the DataFrames.

**Ids.** pandapower numbers each table on its own; OpenFeeder has one id space. The importer keeps
the pandapower indices as ids when they are unique across all imported tables (nets written by
:func:`to_pandapower` always are: the exporter uses the OpenFeeder ids as DataFrame indices).
Otherwise it renumbers with per-table offsets: with ``step`` the smallest power of ten above every
index, the id is ``slot * step + index`` with the slots bus 0, line 1, trafo 2, switch 3, load 4,
sgen 5, storage 6, shunt 7, ext_grid 8, of_measurement 9 -- so buses keep their index, and line 7 of a
net with indices below 100 becomes id 107. Auxiliary buses (see switches) get ``max id + 1, ...`` in
switch order in the first scheme and ``10 * step + switch index`` in the second.

**Switches.** A pandapower bus-bus switch (``et='b'``) becomes a switch between the two buses. A
switch at the end of a line (``et='l'``) or transformer (``et='t'``) becomes an auxiliary bus (the
voltage and coordinates of the switch's bus) that the line or transformer end moves to, plus a switch
from the bus to the auxiliary bus -- the same circuit pandapower builds internally. pandapower types
map ``CB`` -> breaker, ``LBS``/``LS`` -> load_break, ``DS`` -> disconnector, others -> load_break;
open switches are marked ``normally_open``. The exporter writes every switch as a bus-bus switch, so
auxiliary buses stay explicit buses of the exported net.

**Round trips.** ``from_pandapower(to_pandapower(m))`` equals ``m`` table by table. Fields pandapower
has no column for are written to extra columns (``of_kind``, ``of_normally_open``,
``of_remote_controllable``, ``of_fault_indicator``, ``of_customers``, ``of_customer_class``,
``of_share_a``/``_b``/``_c``, ``of_priority``, ``of_pk_kw``, ``of_z01_ratio``), measurement devices to
the extra DataFrame ``net["of_measurement"]`` and the model description to ``net["of_description"]``.
The importer uses an extra column only where it agrees with the pandapower columns (e.g. ``of_kind``
only where it maps to the switch's ``type``), so edits made in pandapower win. In memory the round
trip is exact; pandapower's JSON writer keeps 15 decimals, so a trip through a file gives the floats
back to about 1e-15.

**Conversions.** Lines: ``parallel`` divides the impedances and multiplies capacitance and rating,
``i_rated_ka = max_i_ka * df * parallel``, ``g_us_per_km`` must be 0. Transformers: ``pk_kw =
vkr_percent / 100 * sn_mva * 1000``, ``p0_kw = pfe_kw``, ``parallel`` multiplies ``sn_mva`` and the
losses; the vector group (``"Dyn5"``) gives the windings, ``shift_degree / 30`` the clock (without a
vector group: Dyn for odd clocks, YNyn for even ones); a tap changer counts only with
``tap_changer_type`` 'Ratio' (or 'Symmetrical' without ``tap_step_degree``), as in pandapower's power
flow, else all tap fields are 0. Loads and sgens: powers times ``scaling``; loads must be constant
power (``const_z_*``/``const_i_*`` = 0). sgen ``type`` 'PV' -> pv, 'WP' -> wind, 'CHP...' -> chp,
others -> other. Storage (load convention in pandapower) becomes a generator of kind storage with the
signs of p and q (and of the limits) flipped. Shunts: ``q_step_mvar = -q_mvar`` (pandapower counts
consumption), scaled to the bus voltage when ``vn_kv`` differs. External grids become sources:
``s_sc_max_mva`` (NaN: 1000) -> ``sk_mva``, ``rx_max`` (NaN: 0.1) -> ``rx_ratio``, ``x0x_max`` ->
``z01_ratio``. Bus coordinates (the GeoJSON ``geo`` column) are copied as they are, in whatever unit
the net uses (CIGRE: schematic units, mv_oberrhein: degrees of longitude and latitude).

**Not imported.** Out-of-service buses (OpenFeeder buses have no such flag: drop them in pandapower
first), and rows of the tables gen, trafo3w, impedance, ward, xward, dcline, motor, asymmetric
loads/sgens and the DC and FACTS elements raise :class:`~openfeeder.errors.CaseError` naming the
pandapower table and index. pandapower's ``measurement`` table (state-estimation values, not devices)
is skipped.
"""

from openfeeder.model.pandapower_io.exporter import export_pandapower_json, to_pandapower
from openfeeder.model.pandapower_io.importer import from_pandapower, import_pandapower_json

__all__ = ["export_pandapower_json", "from_pandapower", "import_pandapower_json", "to_pandapower"]
