"""A bounded, Jepsen-style check of the gateway's delivery guarantee under faults:
`python -m checker --mode redis|sqlite --duration S --seed N` (see checker/run.py)."""
