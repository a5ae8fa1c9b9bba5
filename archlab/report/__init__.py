"""What users read: text tables and units (`tables`), the plan's drawing (`graph`),
result tables and CSV (`results`), comparisons (`compare`) and plots (`plots`)."""
