"""The voice-note pipeline: stages (stages.py), the processor doing their AI work
(processor.py, simulated.py), the synthetic history (synthetic.py) and the stall
sweeper (recovery.py); stage tasks are queued after commit by worker/dispatch.py."""
