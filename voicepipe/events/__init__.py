"""Event validation, additive counters, and recording (domain.md "Counters")."""
