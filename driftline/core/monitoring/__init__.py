"""The monitoring plane's pure core: label join, reference profiles and PSI, fairness, detectors.

Plain Python and numpy over batches, with no broker, no Redis and no clock: the monitor service
(`driftline monitor`) feeds these from its batch loop and stores their state in its partition
state, exactly as the feature worker does with the feature engine.
"""
