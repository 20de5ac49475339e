"""FleetLens benchmarks: ``python -m bench [collector|archiver|speed|speed-delta]``.

Each benchmark starts its own embedded broker (Tansu) on a free loopback port with a scratch
lake and runtime directory, runs the service under test as a ``python -m fleetlens`` child
process, measures a baseline in the same run, prints a table and stops everything it started.
Figures are written to ``docs/benchmarks.md`` by hand.
"""
