"""The voice-note pipeline: stages (stages.py), the processor doing their AI work
(processor.py, simulated.py), queueing after commit (dispatch.py) and the stall
sweeper (recovery.py)."""
