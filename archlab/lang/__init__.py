"""The spec language, without torch: YAML loading (`loader`), patterns and expressions,
the spec's schema (`spec`), stack expansion (`stack`), cache sharing (`sharing`), the
compiler and its output, the `Plan`; and the errors every layer above raises."""
