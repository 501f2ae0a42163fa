"""Locust load tests for the served ensemble: `locust -f loadtest/locustfile.py --config loadtest/locust.conf`.

locustfile.py  users (gRPC, HTTP), custom options, event hooks
shapes.py      load shapes: steady, step ramp, spike
report.py      Triton's metrics over the run (the server's view), the SLO gate, the summary
ceiling.py     how many requests one Locust worker can drive, against a plain tritonclient loop
"""
