"""The decision, pure and provider-neutral: the snapshot a cycle reads, the policy plugin API,
the policy chain, the plan it returns and the guards no policy overrides. No I/O, no clock."""
