"""archlab: design, validate, cost and profile hybrid sequence-model architectures."""
