"""Infrastructure: bulk COPY, GC pauses, database roles, the embedded servers."""
