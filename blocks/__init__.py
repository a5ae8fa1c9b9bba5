"""The block kinds of the spec language, one folder each (`blocks/<kind>/`), found by
`archlab.blocks.registry` (`kinds()`, `kind(name)`). `base` holds the `BlockKind` record
and what every kind shares; `cache` the decode cache of a built block."""
