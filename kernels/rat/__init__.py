"""RAT's core op: intra-chunk gated recurrence + inter-chunk softmax attention."""
