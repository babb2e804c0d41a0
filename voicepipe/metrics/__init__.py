"""The metrics engine: snapshots derived from counters, per hour and per day.

- derive.py: additive parts -> every stored figure (pure)
- hourly.py: one hour's snapshots from that hour's counters
- daily.py: one day's snapshots from its 24 hourly snapshots
- due.py: which closed windows are missing or stale (catch-up, late events)
- queries.py: dashboard reads (history, organization and stage breakdowns)
- bookkeeping.py: the aggregation_windows bookkeeping (locks, revisions, failures)
"""
