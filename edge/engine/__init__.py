"""The job engine's pure core: the typed job, its durable record, its life cycle and the outbound queue's decisions.

Nothing here imports trio, reads a clock, or touches a socket or the global random: callers pass `now` (monotonic
seconds) and wall time (unix ms) in, and an injected `random.Random` where jitter is needed. The Trio shell that
carries the decisions out is `edge.engine.shell`.
"""
