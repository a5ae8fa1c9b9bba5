"""The cost model, without torch: exact parameters, FLOPs, cache and decode bytes
(`analytic`), crossovers between specs, and the training-memory estimate (`memory`)."""
